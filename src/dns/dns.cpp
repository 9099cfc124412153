// DNS message parsing: header and question by hand (so a row keeps them even when the rest
// is garbage), everything after the question by libknot, whose rdata printer gives us
// presentation format for every type it knows and RFC 3597 "\# len hex" for the others.
// The records of the common messages are read by hand too, to the same text (see
// parse_records_directly); libknot remains the reference and takes everything else.

#include <arpa/inet.h>

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

extern "C" {
#include <libknot/libknot.h>
}

#include "dns/dns_internal.hpp"
#include "dnstap_collector/dns.hpp"

namespace dnstap_collector {

using dns_detail::NameError;

namespace {

constexpr std::size_t header_size = 12;
constexpr std::size_t rr_fixed_size = 10;  // type, class, ttl, rdlength

inline std::uint16_t rd16(const std::uint8_t* p) noexcept {
    return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}

// Bump allocator for libknot: a message's allocations are thrown away together, so free()
// does nothing and reset() rewinds. Saves a malloc/free pair per record and rdata.
class Arena {
public:
    Arena() = default;
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;
    ~Arena() {
        reset();
        for (void* b : blocks_) std::free(b);
    }

    void* alloc(std::size_t n) noexcept {
        n = (n + 15) & ~std::size_t{15};
        if (n > block_size / 4) return alloc_big(n);
        if (blocks_.empty() || used_ + n > block_size) {
            if (current_ + 1 < blocks_.size()) {
                ++current_;
            } else {
                void* b = std::malloc(block_size);
                if (b == nullptr) return nullptr;
                if (!push(blocks_, b)) return nullptr;
                current_ = blocks_.size() - 1;
            }
            used_ = 0;
        }
        void* p = static_cast<std::byte*>(blocks_[current_]) + used_;
        used_ += n;
        // Blocks are reused message after message: hand out zeroed memory so nothing that
        // strays past an allocation can see (or copy into a row) bytes of an earlier message.
        std::memset(p, 0, n);
        return p;
    }

    void reset() noexcept {
        for (void* b : big_) std::free(b);
        big_.clear();
        current_ = 0;
        used_ = 0;
    }

    static void* knot_alloc(void* ctx, std::size_t len) {
        return static_cast<Arena*>(ctx)->alloc(len);
    }
    static void knot_free(void*) {}

private:
    static constexpr std::size_t block_size = 64 * 1024;

    static bool push(std::vector<void*>& v, void* p) noexcept {
        try {
            v.push_back(p);
            return true;
        } catch (...) {
            std::free(p);
            return false;
        }
    }
    void* alloc_big(std::size_t n) noexcept {
        void* b = std::calloc(1, n);
        if (b == nullptr || !push(big_, b)) return nullptr;
        return b;
    }

    std::vector<void*> blocks_;
    std::vector<void*> big_;
    std::size_t current_ = 0;
    std::size_t used_ = 0;
};

// Owns one parsed knot_pkt_t; freeing is cheap with the arena but keeps this correct with
// any allocator.
class KnotPacket {
public:
    explicit KnotPacket(knot_pkt_t* p) noexcept : p_(p) {}
    KnotPacket(const KnotPacket&) = delete;
    KnotPacket& operator=(const KnotPacket&) = delete;
    ~KnotPacket() {
        if (p_ != nullptr) knot_pkt_free(p_);
    }
    knot_pkt_t* get() const noexcept { return p_; }

private:
    knot_pkt_t* p_;
};

// Per-thread parsing state, reused for every message: the arena, a private copy of the wire
// (knot_pkt_t wants a mutable buffer) and the rdata text buffer.
struct Parser {
    Arena arena;
    knot_mm_t mm{};
    std::unique_ptr<std::uint8_t[]> wire{new std::uint8_t[65535]};
    std::vector<char> text = std::vector<char>(4096);
    knot_dump_style_t style = KNOT_DUMP_STYLE_DEFAULT;

    Parser() {
        mm.ctx = &arena;
        mm.alloc = &Arena::knot_alloc;
        mm.free = &Arena::knot_free;
        style.wrap = false;
        style.generic = false;      // presentation format; libknot falls back to \# for unknown types
        style.human_timestamp = true;  // RRSIG times as YYYYMMDDHHmmSS, like dig
        style.ascii_to_idn = nullptr;
        style.color = nullptr;
    }
};

Parser& parser() {
    thread_local Parser p;
    return p;
}

// Records of earlier messages, kept with their strings' capacity for the next answers.
constexpr std::size_t max_spare_records = 256;

std::vector<ResourceRecord>& spare_records() {
    thread_local std::vector<ResourceRecord> spares = [] {
        std::vector<ResourceRecord> v;
        v.reserve(max_spare_records);
        return v;
    }();
    return spares;
}

void clear_answers(std::vector<ResourceRecord>& answers) noexcept {
    auto& spares = spare_records();
    for (ResourceRecord& r : answers) {
        if (spares.size() == max_spare_records) break;
        spares.push_back(std::move(r));  // reserved: no allocation
    }
    answers.clear();
}

ResourceRecord& add_answer(std::vector<ResourceRecord>& answers) {
    auto& spares = spare_records();
    if (spares.empty()) return answers.emplace_back();
    ResourceRecord& r = answers.emplace_back(std::move(spares.back()));
    spares.pop_back();
    return r;
}

void reset(DnsMessage& m) {
    m.error.clear();
    m.size = 0;
    m.id = m.flags = m.rcode = 0;
    m.qdcount = m.ancount = m.nscount = m.arcount = 0;
    m.has_question = false;
    m.qname.clear();
    m.qtype = m.qclass = 0;
    clear_answers(m.answers);
    m.has_edns = false;
    m.edns_udp_size = 0;
    m.edns_version = 0;
    m.edns_do = false;
    m.ecs.clear();
    m.ede_code = -1;
    m.ede_text.clear();
}

// Walks the records after the question without libknot, to name the first problem when
// libknot refused the message (it only says "malformed").
std::string_view classify_failure(const std::uint8_t* w, std::size_t len, std::size_t pos,
                                  std::size_t records) {
    std::string scratch;
    for (std::size_t i = 0; i < records; ++i) {
        if (pos >= len) return "truncated";
        scratch.clear();
        const auto r = dns_detail::read_name(w, len, pos, scratch, false);
        if (r.error != NameError::none) return dns_detail::to_string(r.error);
        pos = r.next;
        if (len - pos < rr_fixed_size) return "truncated";
        const std::size_t rdlength = rd16(w + pos + 8);
        pos += rr_fixed_size;
        if (len - pos < rdlength) return "truncated";
        pos += rdlength;
    }
    if (pos < len) return "trailing_data";
    return "bad_rr";  // framing is fine: libknot rejected some rdata, or OPT/TSIG misplaced
}

// Rdata in presentation format. Names inside rdata follow the convention of every other name
// we store: lowercase and without the trailing dot (the root stays "."). libknot already
// lowercases the names of the RFC 4034 6.2 types while parsing; tokens that end in an
// unescaped '.' outside quotes are names, and we strip and lowercase them. Any octet outside
// printable ASCII is escaped as \DDD so the text is safe for PostgreSQL.
void normalize_rdata(const char* s, std::size_t n, std::string& out) {
    out.clear();
    out.reserve(n);
    bool quoted = false;
    std::size_t token_start = 0;
    auto end_token = [&]() {
        const std::size_t tlen = out.size() - token_start;
        if (tlen < 2 || out.back() != '.') return;
        // The dot is a separator when preceded by an even run of backslashes.
        std::size_t backslashes = 0;
        for (std::size_t i = out.size() - 1; i > token_start && out[i - 1] == '\\'; --i)
            ++backslashes;
        if (backslashes % 2 != 0) return;
        out.pop_back();
        for (std::size_t i = token_start; i < out.size(); ++i)
            if (out[i] >= 'A' && out[i] <= 'Z') out[i] = static_cast<char>(out[i] + ('a' - 'A'));
    };
    for (std::size_t i = 0; i < n; ++i) {
        const auto c = static_cast<std::uint8_t>(s[i]);
        if (c == '\\' && i + 1 < n) {  // copy escapes whole so an escaped quote stays inside
            const auto e = static_cast<std::uint8_t>(s[++i]);
            if (e >= 0x20 && e < 0x7F) {
                out.push_back('\\');
                out.push_back(static_cast<char>(e));
            } else {  // "\<octet>" means the octet: write it as \DDD
                dns_detail::append_escaped_ascii(out, std::string_view(&s[i], 1));
            }
            continue;
        }
        if (c == '"') quoted = !quoted;
        if (c == ' ' && !quoted) {
            end_token();
            out.push_back(' ');
            token_start = out.size();
            continue;
        }
        if (c < 0x20 || c >= 0x7F) {
            dns_detail::append_escaped_ascii(out, std::string_view(&s[i], 1));
        } else {
            out.push_back(static_cast<char>(c));
        }
    }
    if (!quoted) end_token();
}

// RFC 3597 form, used when libknot cannot print the rdata in its type's own format. Upper-case
// hex like libknot's own generic form, so a record reads the same whichever printed it.
void generic_rdata(const knot_rdata_t* rd, std::string& out) {
    static constexpr char hex[] = "0123456789ABCDEF";
    out = "\\# " + std::to_string(rd->len);
    if (rd->len > 0) out.push_back(' ');
    for (std::uint16_t i = 0; i < rd->len; ++i) {
        out.push_back(hex[rd->data[i] >> 4]);
        out.push_back(hex[rd->data[i] & 0xF]);
    }
}

// ---- rdata layout check -------------------------------------------------------------------
//
// knot_pkt_parse checks an rdata only against its type's descriptor (fixed-size blocks and
// names), not the fields inside the "remainder" block, and libknot's text dump trusts those
// fields: an NSEC3 salt length of 255 in a 5-byte rdata makes it read (and print) 255 bytes
// past the rdata, and the following hash length and bitmap come from whatever lies there
// (earlier messages in our arena; off its end is SEGV). So every rdata is checked here, with
// bounds, against the full layout its type's dumper walks before libknot sees it; what does
// not fit is printed in the RFC 3597 form by generic_rdata instead. Types libknot has a
// descriptor for but that are not checked below get the generic form too: a type can only be
// printed by libknot once its layout is checked here.

// Bounds-checked reader over one rdata. Every method fails rather than step past the end.
class RdataCursor {
public:
    RdataCursor(const std::uint8_t* d, std::size_t len) noexcept : d_(d), len_(len) {}

    const std::uint8_t* here() const noexcept { return d_ + pos_; }
    std::size_t left() const noexcept { return len_ - pos_; }
    bool at_end() const noexcept { return pos_ == len_; }
    bool skip(std::size_t n) noexcept {
        if (left() < n) return false;
        pos_ += n;
        return true;
    }
    bool u8(std::uint8_t& v) noexcept {
        if (left() < 1) return false;
        v = d_[pos_++];
        return true;
    }
    bool u16(std::uint16_t& v) noexcept {
        if (left() < 2) return false;
        v = rd16(d_ + pos_);
        pos_ += 2;
        return true;
    }
    // An uncompressed wire name (libknot stores rdata names decompressed): labels of at most
    // 63 octets, at most 255 octets in all, ending with the root label inside the rdata.
    bool name() noexcept {
        std::size_t total = 0;
        for (;;) {
            std::uint8_t label = 0;
            if (!u8(label) || label > 63) return false;
            total += std::size_t{label} + 1;
            if (total > 255) return false;
            if (label == 0) return true;
            if (!skip(label)) return false;
        }
    }
    // <character-string>: a length octet and that many octets.
    bool char_string() noexcept {
        std::uint8_t n = 0;
        return u8(n) && skip(n);
    }
    // One or more <character-string>s filling the rest exactly (TXT, SPF).
    bool char_strings_to_end() noexcept {
        if (at_end()) return false;
        while (!at_end())
            if (!char_string()) return false;
        return true;
    }
    // RFC 4034 4.1.2 type bitmap filling the rest: windows of 1..32 octets (may be empty).
    bool bitmap_to_end() noexcept {
        while (!at_end()) {
            std::uint8_t window = 0;
            std::uint8_t n = 0;
            if (!u8(window) || !u8(n) || n == 0 || n > 32 || !skip(n)) return false;
        }
        return true;
    }

private:
    const std::uint8_t* d_;
    std::size_t len_;
    std::size_t pos_ = 0;
};

// RFC 9460 SvcParams after the SVCB/HTTPS priority and target: key, length, value, each value
// laid out as its key requires (the ones libknot prints by key; others print as opaque).
bool svc_params_ok(RdataCursor& c) noexcept {
    while (!c.at_end()) {
        std::uint16_t key = 0;
        std::uint16_t vlen = 0;
        if (!c.u16(key) || !c.u16(vlen) || c.left() < vlen) return false;
        switch (key) {
        case 0:  // mandatory: list of keys
            if (vlen == 0 || vlen % 2 != 0) return false;
            break;
        case 1: {  // alpn: one or more character-strings exactly filling the value
            RdataCursor v(c.here(), vlen);
            if (!v.char_strings_to_end()) return false;
            break;
        }
        case 2:  // no-default-alpn: empty
            if (vlen != 0) return false;
            break;
        case 3:  // port
            if (vlen != 2) return false;
            break;
        case 4:  // ipv4hint: one or more addresses
            if (vlen == 0 || vlen % 4 != 0) return false;
            break;
        case 5:  // ech: base64 of something
            if (vlen == 0) return false;
            break;
        case 6:  // ipv6hint
            if (vlen == 0 || vlen % 16 != 0) return false;
            break;
        default:
            break;
        }
        if (!c.skip(vlen)) return false;
    }
    return true;
}

// True when `rd` fits the whole layout libknot's dumper walks for `type` (see above).
bool rdata_dumpable(std::uint16_t type, const knot_rdata_t* rd) noexcept {
    RdataCursor c(rd->data, rd->len);
    switch (type) {
    case KNOT_RRTYPE_A:
        return rd->len == 4;
    case KNOT_RRTYPE_AAAA:
        return rd->len == 16;
    case KNOT_RRTYPE_NS:
    case KNOT_RRTYPE_CNAME:
    case KNOT_RRTYPE_PTR:
    case KNOT_RRTYPE_DNAME:
    case KNOT_RRTYPE_MD:
    case KNOT_RRTYPE_MF:
    case KNOT_RRTYPE_MB:
    case KNOT_RRTYPE_MG:
    case KNOT_RRTYPE_MR:
        return c.name() && c.at_end();
    case KNOT_RRTYPE_SOA:  // mname, rname, serial, refresh, retry, expire, minimum
        return c.name() && c.name() && c.skip(20) && c.at_end();
    case KNOT_RRTYPE_HINFO:  // cpu, os
        return c.char_string() && c.char_string() && c.at_end();
    case KNOT_RRTYPE_MINFO:
    case KNOT_RRTYPE_RP:
        return c.name() && c.name() && c.at_end();
    case KNOT_RRTYPE_MX:
    case KNOT_RRTYPE_AFSDB:
    case KNOT_RRTYPE_RT:
    case KNOT_RRTYPE_KX:
        return c.skip(2) && c.name() && c.at_end();
    case KNOT_RRTYPE_PX:
        return c.skip(2) && c.name() && c.name() && c.at_end();
    case KNOT_RRTYPE_TXT:
    case KNOT_RRTYPE_SPF:
        return c.char_strings_to_end();
    case KNOT_RRTYPE_SIG:
    case KNOT_RRTYPE_RRSIG:  // type covered .. key tag (18 octets), signer, signature
        return c.skip(18) && c.name();
    case KNOT_RRTYPE_KEY:
    case KNOT_RRTYPE_DNSKEY:
    case KNOT_RRTYPE_CDNSKEY:  // flags, protocol, algorithm, key
        return c.skip(4);
    case KNOT_RRTYPE_LOC:  // version 0 is the only layout there is
        return rd->len == 16 && rd->data[0] == 0;
    case KNOT_RRTYPE_SRV:
        return c.skip(6) && c.name() && c.at_end();
    case KNOT_RRTYPE_NAPTR:  // order, preference, flags, services, regexp, replacement
        return c.skip(4) && c.char_string() && c.char_string() && c.char_string() && c.name() &&
               c.at_end();
    case KNOT_RRTYPE_CERT:  // type, key tag, algorithm, certificate
        return c.skip(5);
    case KNOT_RRTYPE_APL:  // items: family, prefix, N | afdlength, afdpart
        while (!c.at_end()) {
            std::uint16_t family = 0;
            std::uint8_t prefix = 0;
            std::uint8_t n = 0;
            if (!c.u16(family) || !c.u8(prefix) || !c.u8(n)) return false;
            const std::size_t afd = n & 0x7Fu;
            if (family == 1) {
                if (prefix > 32 || afd > 4) return false;
            } else if (family == 2) {
                if (prefix > 128 || afd > 16) return false;
            } else {
                return false;
            }
            if (!c.skip(afd)) return false;
        }
        return true;
    case KNOT_RRTYPE_DS:
    case KNOT_RRTYPE_CDS:  // key tag, algorithm, digest type, digest
        return c.skip(4);
    case KNOT_RRTYPE_SSHFP:  // algorithm, fingerprint type, fingerprint
        return c.skip(2);
    case KNOT_RRTYPE_IPSECKEY: {  // precedence, gateway type, algorithm, gateway, key
        std::uint8_t gateway_type = 0;
        if (!c.skip(1) || !c.u8(gateway_type) || !c.skip(1)) return false;
        switch (gateway_type) {
        case 0: return true;
        case 1: return c.skip(4);
        case 2: return c.skip(16);
        case 3: return c.name();
        default: return false;
        }
    }
    case KNOT_RRTYPE_NSEC:  // next name, bitmap
        return c.name() && c.bitmap_to_end();
    case KNOT_RRTYPE_DHCID:
    case KNOT_RRTYPE_OPENPGPKEY:  // opaque, printed as base64
        return true;
    case KNOT_RRTYPE_NSEC3: {  // algorithm, flags, iterations, salt, next hashed owner, bitmap
        std::uint8_t hash_len = 0;
        return c.skip(4) && c.char_string() && c.u8(hash_len) && hash_len > 0 && c.skip(hash_len) &&
               c.bitmap_to_end();
    }
    case KNOT_RRTYPE_NSEC3PARAM:  // algorithm, flags, iterations, salt
        return c.skip(4) && c.char_string() && c.at_end();
    case KNOT_RRTYPE_TLSA:
    case KNOT_RRTYPE_SMIMEA:  // usage, selector, matching type, data
        return c.skip(3);
    case KNOT_RRTYPE_CSYNC:  // serial, flags, bitmap
        return c.skip(6) && c.bitmap_to_end();
    case KNOT_RRTYPE_ZONEMD:  // serial, scheme, algorithm, digest
        return c.skip(6);
    case KNOT_RRTYPE_SVCB:
    case KNOT_RRTYPE_HTTPS:  // priority, target, params
        return c.skip(2) && c.name() && svc_params_ok(c);
    case KNOT_RRTYPE_NID:
    case KNOT_RRTYPE_L64:
        return rd->len == 10;
    case KNOT_RRTYPE_L32:
        return rd->len == 6;
    case KNOT_RRTYPE_LP:
        return c.skip(2) && c.name() && c.at_end();
    case KNOT_RRTYPE_EUI48:
        return rd->len == 6;
    case KNOT_RRTYPE_EUI64:
        return rd->len == 8;
    case KNOT_RRTYPE_URI:  // priority, weight, target
        return c.skip(4);
    case KNOT_RRTYPE_CAA: {  // flags, tag length, tag, value
        std::uint8_t tag_len = 0;
        return c.skip(1) && c.u8(tag_len) && tag_len > 0 && c.skip(tag_len);
    }
    default:
        // Types libknot knows but has not been checked above (NULL, OPT, TKEY, TSIG, NXT,
        // meta-types, any added later): not handed to its type-specific printers. Types it
        // does not know it prints itself as "\# len hex" from rd->len, which is safe.
        return knot_get_rdata_descriptor(type)->type_name == nullptr &&
               knot_get_obsolete_rdata_descriptor(type)->type_name == nullptr;
    }
}

// A and AAAA are most answers: printed directly, same text as libknot (inet_ntop) without
// its snprintf-based machinery.
void append_ipv4(const std::uint8_t* a, std::string& out) {
    char buf[16];
    char* p = buf;
    for (int i = 0; i < 4; ++i) {
        const std::uint8_t b = a[i];
        if (b >= 100) *p++ = static_cast<char>('0' + b / 100);
        if (b >= 10) *p++ = static_cast<char>('0' + (b / 10) % 10);
        *p++ = static_cast<char>('0' + b % 10);
        if (i < 3) *p++ = '.';
    }
    out.append(buf, static_cast<std::size_t>(p - buf));
}

void append_ipv6(const std::uint8_t* a, std::string& out) {
    char buf[INET6_ADDRSTRLEN];
    out.append(buf, dns_detail::format_ipv6(a, buf));
}

bool dump_address(const knot_rrset_t* rr, std::uint16_t pos, std::string& out) {
    const knot_rdata_t* rd = knot_rdataset_at(&rr->rrs, pos);
    if (rr->type == KNOT_RRTYPE_A && rd->len == 4) {
        out.clear();
        append_ipv4(rd->data, out);
        return true;
    }
    if (rr->type == KNOT_RRTYPE_AAAA && rd->len == 16) {
        out.clear();
        append_ipv6(rd->data, out);
        return true;
    }
    return false;
}

void dump_rdata(Parser& ps, const knot_rrset_t* rr, std::uint16_t pos, std::string& out) {
    if (dump_address(rr, pos, out)) return;
    const knot_rdata_t* rd = knot_rdataset_at(&rr->rrs, pos);
    if (!rdata_dumpable(rr->type, rd)) {
        generic_rdata(rd, out);
        return;
    }
    for (;;) {
        const int n = knot_rrset_txt_dump_data(rr, pos, ps.text.data(), ps.text.size(), &ps.style);
        if (n >= 0) {
            normalize_rdata(ps.text.data(), static_cast<std::size_t>(n), out);
            return;
        }
        // 64 KiB of rdata is at most ~256 KiB of text; beyond that it is not a space problem.
        if (n == KNOT_ESPACE && ps.text.size() < (1u << 20)) {
            ps.text.resize(ps.text.size() * 2);
            continue;
        }
        generic_rdata(rd, out);
        return;
    }
}

void read_edns(const knot_rrset_t* opt, const knot_edns_options_t* options, DnsMessage& m) {
    if (opt == nullptr) return;
    m.has_edns = true;
    m.edns_udp_size = knot_edns_get_payload(opt);
    m.edns_version = knot_edns_get_version(opt);
    m.edns_do = knot_edns_do(opt);
    m.rcode = knot_edns_whole_rcode(knot_edns_get_ext_rcode(opt), static_cast<std::uint8_t>(m.rcode));
    if (options == nullptr) return;

    // Options were bounds-checked by knot_edns_get_options; ptr[] holds the first of each code.
    if (const std::uint8_t* o = options->ptr[KNOT_EDNS_OPTION_CLIENT_SUBNET]) {
        knot_edns_client_subnet_t ecs{};
        const std::uint16_t olen = knot_edns_opt_get_length(o);
        if (knot_edns_client_subnet_parse(&ecs, o + KNOT_EDNS_OPTION_HDRLEN, olen) == KNOT_EOK) {
            std::uint8_t addr[16] = {};
            std::memcpy(addr, ecs.address, sizeof addr);
            char text[INET6_ADDRSTRLEN];
            const int af = ecs.family == 1 ? AF_INET : ecs.family == 2 ? AF_INET6 : 0;
            if (af != 0 && inet_ntop(af, addr, text, sizeof text) != nullptr) {
                m.ecs = text;
                m.ecs += '/';
                m.ecs += std::to_string(ecs.source_len);
            }
        }
    }
    if (const std::uint8_t* o = options->ptr[KNOT_EDNS_OPTION_EDE]) {
        const std::uint16_t olen = knot_edns_opt_get_length(o);
        const std::uint8_t* d = o + KNOT_EDNS_OPTION_HDRLEN;
        if (olen >= 2) {
            m.ede_code = rd16(d);
            // EXTRA-TEXT is UTF-8 per RFC 8914; escaped to keep the column plain ASCII.
            dns_detail::append_escaped_ascii(
                m.ede_text, std::string_view(reinterpret_cast<const char*>(d + 2), olen - 2u));
        }
    }
}

// The OPT record whose fixed part (type, class, ttl, rdlength) starts at `h` wrapped in a
// knot_rrset_t as knot_pkt_parse would build it, for the knot_edns_* accessors. Rewinds the
// arena. False when out of memory.
bool wrap_opt(Parser& ps, const std::uint8_t* h, knot_rrset_t& opt) {
    const auto rdlength = rd16(h + 8);
    ps.arena.reset();
    auto* rdata = static_cast<knot_rdata_t*>(ps.arena.alloc(knot_rdata_size(rdlength)));
    if (rdata == nullptr) return false;
    knot_rdata_init(rdata, rdlength, h + rr_fixed_size);
    static std::uint8_t root_name[1] = {0};  // knot_rrset_init wants it mutable; never written
    knot_rrset_init(&opt, root_name, KNOT_RRTYPE_OPT, rd16(h + 2),
                    (std::uint32_t{rd16(h + 4)} << 16) | rd16(h + 6));
    opt.rrs.count = 1;
    opt.rrs.size = static_cast<std::uint32_t>(knot_rdata_size(rdata->len));
    opt.rrs.rdata = rdata;
    return true;
}

// knot_pkt_parse refuses empty rdata in class IN for every type it knows, OPT included
// (rrset-wire.c, allow_zero_rdata): an OPT advertising a UDP size of 1 without options.
bool opt_rdata_refused(const std::uint8_t* h) noexcept {
    return rd16(h + 8) == 0 && rd16(h + 2) == KNOT_CLASS_IN;
}

// ---- records without libknot ---------------------------------------------------------------
//
// knot_pkt_parse is most of the cost of a response: on a capture of an authoritative BIND it
// took 344 M instructions for 150,001 responses (~2,300 each), 224 M of them copying records
// into knot_rrset_t that we then only print, and re-parsing the question we already read. The
// common records are read here straight from the wire instead. libknot stays the reference and
// the fallback: this path accepts only what knot_pkt_parse accepts and writes exactly what the
// libknot path writes (a differential unit test and fuzz_dns_parse compare the two); on
// anything else it gives up and parse_dns parses the message with libknot from scratch, which
// also names the error.

void append_number(std::uint32_t v, std::string& out) {
    char buf[10];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, static_cast<std::size_t>(r.ptr - buf));
}

// One <character-string> as libknot's TXT printer writes it (normalize_rdata leaves it as is):
// quoted, a backslash before '"' and before a backslash, \DDD outside printable ASCII.
void append_quoted(const std::uint8_t* s, std::size_t n, std::string& out) {
    out.push_back('"');
    for (std::size_t i = 0; i < n; ++i) {
        const std::uint8_t c = s[i];
        if (c >= 0x20 && c < 0x7F) {
            if (c == '"' || c == '\\') out.push_back('\\');
            out.push_back(static_cast<char>(c));
        } else {
            const char ddd[4] = {'\\', static_cast<char>('0' + c / 100),
                                 static_cast<char>('0' + (c / 10) % 10),
                                 static_cast<char>('0' + c % 10)};
            out.append(ddd, 4);
        }
    }
    out.push_back('"');
}

// Checks the rdata w[pos..end) of `type` as knot_pkt_parse does (the blocks of the type's
// descriptor exactly filling it; names decompressed, bounded by the end of the rdata) and,
// when `Print`, appends the text the libknot path makes of it: names as knot_dname_to_str
// writes them, lowercase (NOCANON is off and these are RFC 4034 6.2 types; normalize_rdata
// lowercases them anyway) and without the final dot (normalize_rdata). False for any other
// type and for anything not exactly well-formed: libknot decides those.
template <bool Print>
bool read_rdata(std::uint16_t type, const std::uint8_t* w, std::size_t pos, std::size_t end,
                std::string* out) {
    const std::size_t rdlength = end - pos;
    // libknot refuses rdata that decompression makes shorter than rdlength: a name ending in
    // a pointer to a root label takes 2 octets on the wire and 1 decompressed.
    std::size_t shrunk = 0;
    auto name = [&](std::size_t at, std::size_t& next) {
        const auto r = Print ? dns_detail::read_name(w, end, at, *out, true, true,
                                                     dns_detail::NameStyle::libknot)
                             : dns_detail::skip_name(w, end, at);
        next = r.next;
        if (r.next - at > r.length) shrunk += r.next - at - r.length;
        return r.error == NameError::none;
    };
    std::size_t next = 0;
    switch (type) {
    case KNOT_RRTYPE_A:
        if (rdlength != 4) return false;
        if constexpr (Print) append_ipv4(w + pos, *out);
        return true;
    case KNOT_RRTYPE_AAAA:
        if (rdlength != 16) return false;
        if constexpr (Print) append_ipv6(w + pos, *out);
        return true;
    case KNOT_RRTYPE_NS:
    case KNOT_RRTYPE_CNAME:
    case KNOT_RRTYPE_PTR:
    case KNOT_RRTYPE_DNAME:
        return name(pos, next) && next == end && shrunk == 0;
    case KNOT_RRTYPE_MX:  // preference, exchange
        if (rdlength < 3) return false;
        if constexpr (Print) {
            append_number(rd16(w + pos), *out);
            out->push_back(' ');
        }
        return name(pos + 2, next) && next == end && shrunk == 0;
    case KNOT_RRTYPE_SRV:  // priority, weight, port, target
        if (rdlength < 7) return false;
        if constexpr (Print) {
            for (std::size_t i = 0; i < 6; i += 2) {
                append_number(rd16(w + pos + i), *out);
                out->push_back(' ');
            }
        }
        return name(pos + 6, next) && next == end && shrunk == 0;
    case KNOT_RRTYPE_SOA: {  // mname, rname, serial, refresh, retry, expire, minimum
        if (!name(pos, next)) return false;
        if constexpr (Print) out->push_back(' ');
        if (!name(next, next) || end - next != 20 || shrunk != 0) return false;
        if constexpr (Print) {
            for (std::size_t i = 0; i < 20; i += 4) {
                out->push_back(' ');
                append_number((std::uint32_t{rd16(w + next + i)} << 16) | rd16(w + next + i + 2),
                              *out);
            }
        }
        return true;
    }
    case KNOT_RRTYPE_TXT:  // one or more <character-string>s exactly filling the rdata
        for (std::size_t at = pos; at != end;) {
            const std::size_t n = w[at];
            if (end - at - 1 < n) return false;
            if constexpr (Print) {
                if (at != pos) out->push_back(' ');
                append_quoted(w + at + 1, n, *out);
            }
            at += 1 + n;
        }
        return rdlength != 0;
    default:
        return false;
    }
}

// Reads every record after the question at `pos` into `m` when all are of the types above,
// with at most one OPT, as the last record, owned by the root; the whole message must be used.
// Returns false otherwise, leaving answers in `m` for the caller to clear and the EDNS fields
// untouched.
bool parse_records_directly(Parser& ps, const std::uint8_t* w, std::size_t len, std::size_t pos,
                            DnsMessage& m) {
    const std::uint16_t counts[3] = {m.ancount, m.nscount, m.arcount};
    const std::uint8_t* opt = nullptr;  // fixed part of the OPT record
    for (int section = 0; section < 3; ++section) {
        const bool answer = section == 0;
        for (std::uint16_t i = 0; i < counts[section]; ++i) {
            const std::size_t owner = pos;
            ResourceRecord* r = nullptr;
            dns_detail::NameResult nr;
            if (answer) {
                r = &add_answer(m.answers);
                if (m.has_question && len - pos >= 2 && w[pos] == 0xC0 && w[pos + 1] == header_size) {
                    // Most owners point at the question: the qname, already read, lowercased
                    // (its escapes hold no letters), is what read_name would write.
                    r->name.assign(m.qname);
                    for (char& c : r->name)
                        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + ('a' - 'A'));
                    nr.next = pos + 2;
                } else {
                    r->name.clear();
                    nr = dns_detail::read_name(w, len, pos, r->name, /*lowercase=*/true);
                }
            } else {
                nr = dns_detail::skip_name(w, len, pos);
            }
            if (nr.error != NameError::none) return false;
            pos = nr.next;
            if (len - pos < rr_fixed_size) return false;
            const std::uint8_t* h = w + pos;
            const std::uint16_t type = rd16(h);
            pos += rr_fixed_size;
            const std::size_t rdlength = rd16(h + 8);
            if (len - pos < rdlength) return false;
            const std::size_t end = pos + rdlength;
            if (type == KNOT_RRTYPE_OPT) {
                // libknot takes one OPT anywhere in the additional section and any owner; the
                // shape every sender uses is enough here.
                if (section != 2 || i + 1 != counts[2] || w[owner] != 0 || opt_rdata_refused(h))
                    return false;
                opt = h;
            } else if (answer) {
                r->type = type;
                r->rclass = rd16(h + 2);
                r->ttl = (std::uint32_t{rd16(h + 4)} << 16) | rd16(h + 6);
                r->rdata.clear();
                if (!read_rdata<true>(type, w, pos, end, &r->rdata)) return false;
            } else if (!read_rdata<false>(type, w, pos, end, nullptr)) {
                return false;
            }
            pos = end;
        }
    }
    if (pos != len) return false;
    if (opt != nullptr) {
        knot_rrset_t rr;
        knot_edns_options_t* options = nullptr;
        if (!wrap_opt(ps, opt, rr) || knot_edns_get_options(&rr, &options, &ps.mm) != KNOT_EOK)
            return false;
        read_edns(&rr, options, m);
    }
    return true;
}

void read_answers(Parser& ps, const knot_pkt_t* pkt, DnsMessage& m) {
    const knot_pktsection_t* an = knot_pkt_section(pkt, KNOT_ANSWER);
    m.answers.reserve(an->count);
    for (std::uint16_t i = 0; i < an->count; ++i) {
        const knot_rrset_t* rr = knot_pkt_rr(an, i);
        for (std::uint16_t j = 0; j < rr->rrs.count; ++j) {
            ResourceRecord& r = add_answer(m.answers);
            const std::size_t owner_len = knot_dname_size(rr->owner);
            if (!name_to_text({rr->owner, owner_len}, r.name, true)) r.name = "?";
            r.type = rr->type;
            r.rclass = rr->rclass;
            r.ttl = rr->ttl;
            dump_rdata(ps, rr, j, r.rdata);
        }
    }
}

// `direct`: try parse_records_directly before libknot; `*took_direct`
// (when given) says whether one of them produced the result.
bool parse_message(std::span<const std::uint8_t> wire, DnsMessage& m, bool direct,
                   bool* took_direct = nullptr) {
    reset(m);
    const std::uint8_t* w = wire.data();
    const std::size_t len = wire.size();
    m.size = static_cast<std::uint32_t>(len);
    if (len < header_size) {
        m.error = "truncated";
        return false;
    }
    m.id = rd16(w);
    m.flags = rd16(w + 2);
    m.rcode = m.flags & 0xF;
    m.qdcount = rd16(w + 4);
    m.ancount = rd16(w + 6);
    m.nscount = rd16(w + 8);
    m.arcount = rd16(w + 10);

    std::size_t pos = header_size;
    bool qname_compressed = false;
    if (m.qdcount > 0) {
        const auto r = dns_detail::read_name(w, len, pos, m.qname, /*lowercase=*/false);
        if (r.error != NameError::none) {
            m.error = dns_detail::to_string(r.error);
            m.qname.clear();
            return false;
        }
        if (len - r.next < 4) {
            m.error = "truncated";
            m.qname.clear();
            return false;
        }
        m.has_question = true;
        qname_compressed = r.compressed;
        m.qtype = rd16(w + r.next);
        m.qclass = rd16(w + r.next + 2);
        pos = r.next + 4;
    }
    const std::size_t records = std::size_t{m.ancount} + m.nscount + m.arcount;
    if (m.qdcount > 1) {
        // libknot (like most servers) refuses several questions; keep the first.
        m.error = "bad_qdcount";
        return false;
    }
    if (records == 0) {
        if (pos < len) {
            m.error = "trailing_data";
            return false;
        }
        return true;  // header + question only: nothing for libknot to do
    }
    if (len > 65535) {
        m.error = "too_large";
        return false;
    }

    Parser& ps = parser();
    if (direct) {
        if (took_direct != nullptr) *took_direct = true;
        // libknot refuses pointers in the question: leave that message to it.
        if (!qname_compressed && parse_records_directly(ps, w, len, pos, m)) return true;
        if (took_direct != nullptr) *took_direct = false;
        clear_answers(m.answers);
    }
    ps.arena.reset();
    std::memcpy(ps.wire.get(), w, len);
    KnotPacket pkt(knot_pkt_new(ps.wire.get(), static_cast<std::uint16_t>(len), &ps.mm));
    if (pkt.get() == nullptr) {
        m.error = "no_memory";
        return false;
    }
    // KEEPWIRE: do not strip TSIG from the wire; NOCANON left off so owner and rdata names
    // of the RFC 4034 types come out lowercase.
    const int ret = knot_pkt_parse(pkt.get(), KNOT_PF_KEEPWIRE);
    // On failure libknot keeps the records parsed before the bad one: use them.
    read_answers(ps, pkt.get(), m);
    read_edns(pkt.get()->opt_rr, pkt.get()->edns_opts, m);
    if (ret != KNOT_EOK) {
        if (ret == KNOT_ETRAIL) {
            m.error = "trailing_data";
        } else if (qname_compressed) {
            m.error = "bad_compression";  // libknot refuses pointers in the question
        } else {
            m.error = classify_failure(w, len, pos, records);
        }
        return false;
    }
    return true;
}

}  // namespace

bool parse_dns(std::span<const std::uint8_t> wire, DnsMessage& m) {
    return parse_message(wire, m, /*direct=*/true);
}

bool dns_detail::parse_dns_with_libknot(std::span<const std::uint8_t> wire, DnsMessage& m) {
    return parse_message(wire, m, /*direct=*/false);
}

bool dns_detail::parse_dns(std::span<const std::uint8_t> wire, DnsMessage& m, bool& records_direct) {
    records_direct = false;
    return parse_message(wire, m, /*direct=*/true, &records_direct);
}

}  // namespace dnstap_collector
