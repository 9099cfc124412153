#include "sinks/copy_encoder.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <chrono>
#include <cstring>
#include <unordered_map>

#include "decode/swar.hpp"
#include "dnstap_collector/dns.hpp"

namespace dnstap_collector::copy {

std::string_view header() noexcept {
    // Signature (11 bytes), flags int32 0 (no OIDs), header extension length int32 0.
    static constexpr char bytes[] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";
    return {bytes, 19};
}

std::string_view trailer() noexcept {
    static constexpr char bytes[] = "\377\377";
    return {bytes, 2};
}

namespace {

inline void store32(char* p, std::uint32_t v) noexcept { RowWriter::store_be(p, v); }

// memcpy, with the short copies of names and mnemonics done inline (two overlapping word
// copies) rather than by a call.
inline void copy_bytes(char* to, const char* from, std::size_t n) noexcept {
    if (n >= 8 && n <= 16) {
        const std::uint64_t head = swar::load(from), tail = swar::load(from + n - 8);
        swar::store(to, head);
        swar::store(to + n - 8, tail);
    } else if (n >= 4 && n < 8) {
        std::uint32_t head, tail;
        std::memcpy(&head, from, 4);
        std::memcpy(&tail, from + n - 4, 4);
        std::memcpy(to, &head, 4);
        std::memcpy(to + n - 4, &tail, 4);
    } else if (n > 0 && n < 4) {
        const char first = from[0], middle = from[n / 2], last = from[n - 1];
        to[0] = first;
        to[n / 2] = middle;
        to[n - 1] = last;
    } else if (n > 16) {
        std::memcpy(to, from, n);
    }
}

// Length + bytes.
inline char* put_text(char* p, std::string_view s) noexcept {
    store32(p, static_cast<std::uint32_t>(s.size()));
    copy_bytes(p + 4, s.data(), s.size());
    return p + 4 + s.size();
}

// The whole of s is printable ASCII (and, with no_backslash, holds no '\\').
bool printable_ascii(std::string_view s, bool no_backslash) noexcept {
    if (no_backslash)
        return !swar::scan(s.data(), s.size(), [](std::uint64_t x) { return swar::unprintable(x) | swar::equal(x, '\\'); });
    return !swar::scan(s.data(), s.size(), swar::unprintable);
}

}  // namespace

void RowWriter::grow(std::size_t n) {
    const std::size_t used = size();
    std::size_t want = used + n;
    if (ahead_) {
        // Room for the next rows too; up to the capacity reserved when the row fits in it,
        // so a string reserved for a batch keeps its size (and its allocation).
        // Steps under glibc's threshold for `rep stosb`: zero-filled with vector stores.
        const std::size_t step = std::max(want, used + 1024);
        want = out_.capacity() >= want ? std::min(step, out_.capacity()) : step;
    }
    out_.resize(want);
    p_ = out_.data() + used;
    end_ = out_.data() + out_.size();
}

void RowWriter::flush() noexcept {
    if (!p_) return;
    out_.resize(static_cast<std::size_t>(p_ - out_.data()));
    p_ = end_ = nullptr;
}

void RowWriter::text(std::string_view s) { wrote(put_text(room(4 + s.size()), s)); }

void RowWriter::inet(const IpAddress& a) {
    if (a.length != 4 && a.length != 16) return null();
    // PostgreSQL's own family numbers (PGSQL_AF_INET = AF_INET + 0 = 2, PGSQL_AF_INET6 =
    // AF_INET + 1 = 3), not the platform's AF_INET6.
    char* p = room(8 + 16);
    store32(p, 4u + a.length);
    p[4] = a.length == 4 ? 2 : 3;
    p[5] = static_cast<char>(a.length == 4 ? 32 : 128);  // bits
    p[6] = 0;                                             // is_cidr
    p[7] = static_cast<char>(a.length);
    std::memcpy(p + 8, a.bytes.data(), a.length);
    wrote(p + 8 + a.length);
}

namespace {

// Dotted-quad IPv4 exactly as inet_pton(AF_INET) takes it (four decimal parts of at most
// 255, no leading zeros, nothing else), without the copy and call: the rdata of nearly every
// A record. False for anything else, which then goes to inet_pton.
bool parse_ipv4(std::string_view s, std::uint8_t* out) noexcept {
    std::size_t i = 0;
    for (int part = 0; part < 4; ++part) {
        if (part > 0) {
            if (i >= s.size() || s[i] != '.') return false;
            ++i;
        }
        const std::size_t start = i;
        unsigned v = 0;
        while (i < s.size() && i - start < 3 && s[i] >= '0' && s[i] <= '9') v = v * 10 + static_cast<unsigned>(s[i++] - '0');
        const std::size_t digits = i - start;
        if (digits == 0 || v > 255 || (digits > 1 && s[start] == '0')) return false;
        out[part] = static_cast<std::uint8_t>(v);
    }
    return i == s.size();
}

}  // namespace

bool RowWriter::inet_text(std::string_view address) {
    IpAddress a;
    if (parse_ipv4(address, a.bytes.data())) {
        a.length = 4;
        inet(a);
        return true;
    }
    if (address.size() >= INET6_ADDRSTRLEN) return false;
    char buf[INET6_ADDRSTRLEN];
    std::memcpy(buf, address.data(), address.size());
    buf[address.size()] = '\0';
    if (inet_pton(AF_INET, buf, a.bytes.data()) == 1) a.length = 4;
    else if (inet_pton(AF_INET6, buf, a.bytes.data()) == 1) a.length = 16;
    else return false;
    inet(a);
    return true;
}

void RowWriter::jsonb(std::string_view json) {
    char* p = room(5 + json.size());
    store32(p, static_cast<std::uint32_t>(json.size() + 1));
    p[4] = 1;  // jsonb binary format version
    copy_bytes(p + 5, json.data(), json.size());
    wrote(p + 5 + json.size());
}

namespace {

// Length of the valid UTF-8 sequence at s[i] (2..4), or 0 if it is not one. Rejects
// overlong forms, surrogates, values above U+10FFFF and C1 controls.
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
    auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    unsigned char c = b(i);
    std::size_t n;
    std::uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) { n = 2; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { n = 3; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 4; cp = c & 0x07; }
    else return 0;
    if (i + n > s.size()) return 0;
    for (std::size_t k = 1; k < n; ++k) {
        if ((b(i + k) & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (b(i + k) & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff) return 0;
    if (cp >= 0xd800 && cp <= 0xdfff) return 0;
    if (cp < 0xa0) return 0;  // C1 control characters
    return n;
}

void append_ddd(std::string& out, unsigned char c) {
    char buf[5];
    buf[0] = '\\';
    buf[1] = static_cast<char>('0' + c / 100);
    buf[2] = static_cast<char>('0' + c / 10 % 10);
    buf[3] = static_cast<char>('0' + c % 10);
    out.append(buf, 4);
}

}  // namespace

std::string sanitize_text(std::string_view raw, bool escape_backslash) {
    std::string out;
    out.reserve(raw.size());
    for (std::size_t i = 0; i < raw.size();) {
        auto c = static_cast<unsigned char>(raw[i]);
        if (c >= 0x20 && c < 0x7f) {
            if (c == '\\' && escape_backslash) out += '\\';
            out += static_cast<char>(c);
            ++i;
        } else if (std::size_t n = c >= 0x80 ? utf8_sequence(raw, i) : 0; n > 0) {
            out.append(raw.substr(i, n));
            i += n;
        } else {
            append_ddd(out, c);
            ++i;
        }
    }
    return out;
}

namespace {

// Copies s to `to` (room for s.size() bytes) when it is printable ASCII (with no_backslash,
// without '\\'); says whether it was.
bool copy_printable(char* to, std::string_view s, bool no_backslash) noexcept {
    if (!printable_ascii(s, no_backslash)) return false;
    copy_bytes(to, s.data(), s.size());
    return true;
}

// The same with ASCII letters lowercased on the way.
bool copy_printable_lower(char* to, std::string_view s) noexcept {
    const char* d = s.data();
    const std::size_t n = s.size();
    if (n < 8) {
        bool ok = true;
        for (std::size_t i = 0; i < n; ++i) {
            auto c = static_cast<unsigned char>(d[i]);
            ok &= c >= 0x20 && c < 0x7f;
            to[i] = static_cast<char>(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
        }
        return ok;
    }
    std::uint64_t bad = 0;
    auto word = [&](std::size_t i) {
        const std::uint64_t x = swar::load(d + i);
        bad |= swar::unprintable(x);
        swar::store(to + i, swar::lower(x));  // exact when the word is ASCII, else unused
    };
    for (std::size_t i = 0; i + 8 <= n; i += 8) word(i);
    if (n % 8) word(n - 8);
    return bad == 0;
}

}  // namespace

void RowWriter::clean_text(std::string_view raw, bool escape_backslash) {
    char* p = room(4 + raw.size());
    if (!copy_printable(p + 4, raw, escape_backslash)) return text(sanitize_text(raw, escape_backslash));
    store32(p, static_cast<std::uint32_t>(raw.size()));
    wrote(p + 4 + raw.size());
}

namespace {

// Length of a presentation name without its trailing dot: an escaped final dot ("a\.") is
// part of the label (count the backslashes before it); the root stays ".".
std::size_t without_final_dot(std::string_view n) noexcept {
    if (n.size() <= 1 || n.back() != '.') return n.size();
    std::size_t slashes = 0;
    for (std::size_t k = n.size() - 1; k > 0 && n[k - 1] == '\\'; --k) ++slashes;
    return slashes % 2 == 0 ? n.size() - 1 : n.size();
}

// Presentation name as stored: lowercase, no trailing dot (root stays "."), valid UTF-8.
std::string stored_name(std::string_view presentation) {
    std::string n = lowercase_name(presentation);
    n.resize(without_final_dot(n));
    return sanitize_text(n, false);
}

// The same, written as a text field without temporary strings when the name is printable
// ASCII (nearly always).
void write_name(RowWriter& w, std::string_view presentation) {
    // The final dot is printable: checking the rest is checking the whole.
    std::string_view n = presentation.substr(0, without_final_dot(presentation));
    char* p = w.room(4 + n.size());
    if (!copy_printable_lower(p + 4, n)) return w.text(stored_name(presentation));
    store32(p, static_cast<std::uint32_t>(n.size()));
    w.wrote(p + 4 + n.size());
}

// Mnemonics of the common values, computed once (type_to_text formats through libknot).
struct MnemonicTables {
    std::array<std::array<std::string, 256>, 3> t;
    MnemonicTables() {
        for (std::uint16_t i = 0; i < 256; ++i) {
            t[0][i] = type_to_text(i);
            t[1][i] = class_to_text(i);
            t[2][i] = rcode_to_text(i);
        }
    }
};
const MnemonicTables& mnemonic_tables() {
    static const MnemonicTables tables;
    return tables;
}
// Rare values, each kept once per thread (at most 3 x 65536 short strings): a returned
// reference stays valid, so two texts can be held at once (sorting compares two).
const std::string& rare_text(std::uint16_t v, std::string (*f)(std::uint16_t), int which) {
    thread_local std::unordered_map<std::uint32_t, std::string> others;
    const auto key = (static_cast<std::uint32_t>(which) << 16) | v;
    auto it = others.find(key);
    if (it == others.end()) it = others.emplace(key, f(v)).first;
    return it->second;
}
inline const std::string& cached_text(std::uint16_t v, std::string (*f)(std::uint16_t), int which) {
    if (v < 256) return mnemonic_tables().t[static_cast<std::size_t>(which)][v];
    return rare_text(v, f, which);
}
const std::string& type_text(std::uint16_t t) { return cached_text(t, type_to_text, 0); }
const std::string& class_text(std::uint16_t c) { return cached_text(c, class_to_text, 1); }
const std::string& rcode_text(std::uint16_t r) { return cached_text(r, rcode_to_text, 2); }

// Header flags and opcodes as text, built once: flags_to_text and opcode_to_text build a
// new string on each call. flags_to_text reads the 7 bits of `flag_bits` only.
constexpr std::array<std::uint16_t, 7> flag_bits = {0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010};
const std::string& flags_text(std::uint16_t flags) {
    static const std::array<std::string, 128> table = [] {
        std::array<std::string, 128> t;
        for (std::size_t i = 0; i < t.size(); ++i) {
            std::uint16_t f = 0;
            for (std::size_t b = 0; b < flag_bits.size(); ++b)
                if (i & (std::size_t{1} << b)) f = static_cast<std::uint16_t>(f | flag_bits[b]);
            t[i] = flags_to_text(f);
        }
        return t;
    }();
    // Bit b of the index is flag_bits[b], each moved into place.
    const unsigned f = flags;
    const unsigned i = ((f >> 15) & 1) | ((f >> 9) & 2) | ((f >> 7) & 4) | ((f >> 5) & 8) | ((f >> 3) & 16) |
                       (f & 32) | ((f << 2) & 64);
    return table[i];
}
const std::string& opcode_text(std::uint8_t opcode) {
    static const std::array<std::string, 16> table = [] {
        std::array<std::string, 16> t;
        for (std::size_t i = 0; i < t.size(); ++i) t[i] = opcode_to_text(static_cast<std::uint8_t>(i));
        return t;
    }();
    return table[opcode & 0xf];  // a 4-bit header field
}

std::int64_t ns_to_us(std::int64_t ns) noexcept { return ns / 1000; }

}  // namespace

std::int64_t exchange_time_us(const Exchange& e) noexcept {
    if (const ExchangeView view(e); view.time_ns >= 0) return ns_to_us(view.time_ns);
    if (e.query && e.query->response_time_ns >= 0) return ns_to_us(e.query->response_time_ns);
    // No time at all (malformed sender): file it under arrival so the row is not lost.
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch()).count();
}

struct RowSource {
    const Exchange& e;
    const DnstapMessage& any;    // the query message when there is one
    const DnsMessage* q;         // DNS of the query message
    const DnsMessage* r;         // DNS of the response message
    const DnsMessage* head;      // question and header: the query's, else the response's
    const DnsMessage* edns;      // OPT: the query's, else the response's
    std::int64_t time_us;
    std::int64_t response_time_ns;
    std::int64_t latency_us;     // -1 when unknown
};

namespace {

RowSource make_source(const Exchange& e) {
    const DnsMessage* q = e.query && e.query->query ? &*e.query->query : nullptr;
    const DnsMessage* r = e.response && e.response->response ? &*e.response->response : nullptr;
    // The client's OPT (its buffer size, DO, subnet) is what an analyst asks about; the
    // server's is the fallback when the query is not there (BIND's CR comes alone).
    const DnsMessage* edns = q && q->has_edns ? q : (r && r->has_edns ? r : nullptr);
    const ExchangeView view(e);
    // exchange_time_us without a second view (its first choice is this view's time).
    const std::int64_t time_us = view.time_ns >= 0 ? ns_to_us(view.time_ns) : exchange_time_us(e);
    return RowSource{e, e.any(), q, r, q ? q : r, edns, time_us, view.response_time_ns, view.latency_us};
}

void opt_text(RowWriter& w, std::string_view s) {
    if (s.empty()) w.null();
    else w.clean_text(s, false);
}

// stored_name into a reused string: no allocation once it has grown, when the name is
// printable ASCII (nearly always).
void stored_name_into(std::string& out, std::string_view presentation) {
    if (!printable_ascii(presentation, false)) {
        out = stored_name(presentation);
        return;
    }
    out.assign(presentation.substr(0, without_final_dot(presentation)));
    for (char& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + ('a' - 'A'));
}

// A name that is its own stored form: printable ASCII, lowercase, no final dot.
bool is_stored_name(std::string_view s) noexcept {
    return !swar::scan(s.data(), s.size(), [](std::uint64_t x) { return swar::unprintable(x) | swar::upper_flags(x); }) &&
           without_final_dot(s) == s.size();
}

// The stored form of a name: the name itself when it is one already (owner names from the
// DNS parser), else built in `scratch`.
std::string_view stored_name_view(std::string& scratch, std::string_view presentation) {
    if (is_stored_name(presentation)) return presentation;
    stored_name_into(scratch, presentation);
    return scratch;
}

// sanitize_text's result: raw itself when it is printable ASCII, else built in `scratch`.
std::string_view sanitized_view(std::string& scratch, std::string_view raw, bool escape_backslash) {
    if (printable_ascii(raw, escape_backslash)) return raw;
    scratch = sanitize_text(raw, escape_backslash);
    return scratch;
}

// s is printable ASCII without '"' and '\\' (and, with no_upper, without 'A'..'Z'): its own
// JSON string content.
bool plain_json_text(std::string_view s, bool no_upper = false) noexcept {
    auto special = [](std::uint64_t x) { return swar::unprintable(x) | swar::equal(x, '"') | swar::equal(x, '\\'); };
    if (no_upper)
        return !swar::scan(s.data(), s.size(), [&](std::uint64_t x) { return special(x) | swar::upper_flags(x); });
    return !swar::scan(s.data(), s.size(), special);
}

inline char* put_literal(char* p, std::string_view s) noexcept {
    std::memcpy(p, s.data(), s.size());
    return p + s.size();
}

// A JSON string of s, which plain_json_text said needs no escape.
inline char* put_quoted(char* p, std::string_view s) noexcept {
    *p++ = '"';
    copy_bytes(p, s.data(), s.size());
    p += s.size();
    *p++ = '"';
    return p;
}

// Room a JSON string of s takes at most.
constexpr std::size_t json_room(std::size_t size, bool plain) noexcept { return (plain ? size : 6 * size) + 2; }

// The answers as jsonb, built in place: [{"name","type","ttl","rdata"}, ...]. Names from the
// DNS parser are stored names already (lowercase, no final dot) and rdata is nearly always
// printable without quotes: both are then copied as they are, and only other strings are
// rebuilt (stored_name_into, sanitize_text) or escaped.
void answers_jsonb(RowWriter& w, const DnsMessage& m) {
    const std::size_t field = w.size();
    char* p = w.room(6);
    p += 4;
    *p++ = '\1';  // jsonb binary format version
    *p++ = '[';
    w.wrote(p);
    std::string name_store, rdata_store;  // only for names and rdata that are not plain
    bool first = true;
    for (const auto& rr : m.answers) {
        // Nearly always one scan each: the string is already stored form and plain JSON.
        std::string_view name = rr.name;
        bool name_plain = plain_json_text(name, /*no_upper=*/true) && without_final_dot(name) == name.size();
        if (!name_plain) {
            name = stored_name_view(name_store, rr.name);
            name_plain = plain_json_text(name);
        }
        const std::string& type = type_text(rr.type);
        const bool type_plain = plain_json_text(type);
        std::string_view rdata = rr.rdata;
        bool rdata_plain = plain_json_text(rdata);
        if (!rdata_plain) {
            rdata = sanitized_view(rdata_store, rr.rdata, false);
            rdata_plain = plain_json_text(rdata);
        }
        // ",{\"name\":" ",\"type\":" ",\"ttl\":" 10 digits ",\"rdata\":" "}": 45 bytes.
        p = w.room(48 + json_room(name.size(), name_plain) + json_room(type.size(), type_plain) +
                   json_room(rdata.size(), rdata_plain));
        if (!first) *p++ = ',';
        first = false;
        p = put_literal(p, "{\"name\":");
        p = name_plain ? put_quoted(p, name) : write_json_string(p, name);
        p = put_literal(p, ",\"type\":");
        p = type_plain ? put_quoted(p, type) : write_json_string(p, type);
        p = put_literal(p, ",\"ttl\":");
        p = std::to_chars(p, p + 10, rr.ttl).ptr;
        p = put_literal(p, ",\"rdata\":");
        p = rdata_plain ? put_quoted(p, rdata) : write_json_string(p, rdata);
        *p++ = '}';
        w.wrote(p);
    }
    p = w.room(1);
    *p++ = ']';
    w.wrote(p);
    store32(w.at(field), static_cast<std::uint32_t>(w.size() - field - 4));
}

const Policy* policy_of(const RowSource& s) {
    if (s.e.response && s.e.response->policy.present) return &s.e.response->policy;
    if (s.e.query && s.e.query->policy.present) return &s.e.query->policy;
    return nullptr;
}

std::string policy_json(const Policy& p) {
    std::string j = "{";
    auto field = [&](const char* name, const std::string& v) {
        if (v.empty()) return;
        if (j.size() > 1) j += ',';
        append_json_string(j, name);
        j += ':';
        append_json_string(j, sanitize_text(v, false));
    };
    field("type", p.type);
    field("rule", p.rule);
    field("action", p.action);
    field("match", p.match);
    field("value", p.value);
    return j + "}";
}

const DnstapMessage* zone_source(const RowSource& s) {
    if (s.e.response && !s.e.response->query_zone.empty()) return &*s.e.response;
    if (s.e.query && !s.e.query->query_zone.empty()) return &*s.e.query;
    return nullptr;
}

void error_text(const RowSource& s, RowWriter& w) {
    std::string_view qe = s.q ? std::string_view(s.q->error) : std::string_view();
    std::string_view re = s.r ? std::string_view(s.r->error) : std::string_view();
    if (!qe.empty() && !re.empty()) {
        std::string both = "query: ";
        both.append(qe).append("; response: ").append(re);
        return opt_text(w, both);
    }
    opt_text(w, qe.empty() ? re : qe);
}

using W = RowWriter;
using S = RowSource;

// The column table: name and encoder, in COPY order.
const std::array<Column, 35> columns = {{
    {"time", [](const S& s, W& w) { w.timestamptz_unix_us(s.time_us); }},
    {"response_time", [](const S& s, W& w) {
         if (s.response_time_ns >= 0) w.timestamptz_unix_us(ns_to_us(s.response_time_ns)); else w.null();
     }},
    {"identity", [](const S& s, W& w) {
         if (s.any.identity.empty()) w.null(); else w.clean_text(s.any.identity, true);
     }},
    // kind_of, short_name and to_string give fixed printable words: text as they are.
    {"kind", [](const S& s, W& w) { w.text(kind_of(s.any.type)); }},
    {"query_type", [](const S& s, W& w) {
         if (s.e.query) w.text(short_name(s.e.query->type)); else w.null();
     }},
    {"response_type", [](const S& s, W& w) {
         if (s.e.response) w.text(short_name(s.e.response->type)); else w.null();
     }},
    {"transport", [](const S& s, W& w) {
         if (s.any.protocol == SocketProtocol::unknown) w.null(); else w.text(to_string(s.any.protocol));
     }},
    {"query_address", [](const S& s, W& w) { w.inet(s.any.query_address); }},
    {"query_port", [](const S& s, W& w) {
         if (s.any.has_query_port) w.int4(static_cast<std::int32_t>(s.any.query_port)); else w.null();
     }},
    {"response_address", [](const S& s, W& w) { w.inet(s.any.response_address); }},
    {"response_port", [](const S& s, W& w) {
         if (s.any.has_response_port) w.int4(static_cast<std::int32_t>(s.any.response_port)); else w.null();
     }},
    {"dns_id", [](const S& s, W& w) { if (s.head) w.int4(s.head->id); else w.null(); }},
    {"qname", [](const S& s, W& w) {
         if (s.head && s.head->has_question) write_name(w, s.head->qname); else w.null();
     }},
    {"qtype", [](const S& s, W& w) {
         if (s.head && s.head->has_question) w.text(type_text(s.head->qtype)); else w.null();
     }},
    {"qclass", [](const S& s, W& w) {
         if (s.head && s.head->has_question) w.text(class_text(s.head->qclass)); else w.null();
     }},
    {"opcode", [](const S& s, W& w) { if (s.head) w.text(opcode_text(s.head->opcode())); else w.null(); }},
    {"rcode", [](const S& s, W& w) { if (s.r) w.text(rcode_text(s.r->rcode)); else w.null(); }},
    {"flags", [](const S& s, W& w) {
         const DnsMessage* m = s.r ? s.r : s.q;
         if (m) w.text(flags_text(m->flags)); else w.null();
     }},
    {"has_query", [](const S& s, W& w) { w.boolean(s.e.query != nullptr); }},
    {"has_response", [](const S& s, W& w) { w.boolean(s.e.response != nullptr); }},
    {"latency_us", [](const S& s, W& w) { if (s.latency_us != -1) w.int8(s.latency_us); else w.null(); }},
    {"query_size", [](const S& s, W& w) { if (s.q) w.int4(static_cast<std::int32_t>(s.q->size)); else w.null(); }},
    {"response_size", [](const S& s, W& w) { if (s.r) w.int4(static_cast<std::int32_t>(s.r->size)); else w.null(); }},
    {"answer_count", [](const S& s, W& w) { if (s.r) w.int4(s.r->ancount); else w.null(); }},
    {"authority_count", [](const S& s, W& w) { if (s.r) w.int4(s.r->nscount); else w.null(); }},
    {"additional_count", [](const S& s, W& w) { if (s.r) w.int4(s.r->arcount); else w.null(); }},
    {"answers", [](const S& s, W& w) { if (s.r) answers_jsonb(w, *s.r); else w.null(); }},
    {"edns_udp_size", [](const S& s, W& w) { if (s.edns) w.int4(s.edns->edns_udp_size); else w.null(); }},
    {"edns_do", [](const S& s, W& w) { if (s.edns) w.boolean(s.edns->edns_do); else w.null(); }},
    {"ecs", [](const S& s, W& w) {
         // The query's subnet is what the client sent; a response only echoes it.
         if (s.q && !s.q->ecs.empty()) opt_text(w, s.q->ecs);
         else opt_text(w, s.r ? std::string_view(s.r->ecs) : std::string_view());
     }},
    {"ede_code", [](const S& s, W& w) { if (s.r && s.r->ede_code >= 0) w.int4(s.r->ede_code); else w.null(); }},
    {"ede_text", [](const S& s, W& w) { opt_text(w, s.r ? std::string_view(s.r->ede_text) : std::string_view()); }},
    {"query_zone", [](const S& s, W& w) {
         const DnstapMessage* m = zone_source(s);
         if (m) write_name(w, m->query_zone); else w.null();
     }},
    {"policy", [](const S& s, W& w) {
         const Policy* p = policy_of(s);
         if (p) w.jsonb(policy_json(*p)); else w.null();
     }},
    {"error", [](const S& s, W& w) { error_text(s, w); }},
}};

}  // namespace

std::span<const Column> exchange_columns() noexcept { return columns; }

std::string exchange_copy_statement() {
    std::string sql = "COPY dnstap.exchange (";
    for (std::size_t i = 0; i < columns.size(); ++i) {
        if (i) sql += ", ";
        sql += columns[i].name;
    }
    return sql + ") FROM STDIN (FORMAT binary)";
}

namespace {

// One row through a writer of out.rows that may run ahead.
void append_row(const Exchange& e, EncodedBatch& out, RowWriter& w) {
    if (!e.query && !e.response) return;
    RowSource s = make_source(e);
    w.begin_row(static_cast<std::int16_t>(columns.size()));
    for (const auto& c : columns) c.encode(s, w);
    out.row_end.push_back(static_cast<std::uint32_t>(w.size()));
    out.messages.push_back(static_cast<std::uint8_t>(e.message_count()));
    out.times_us.push_back(s.time_us);
}

}  // namespace

void append_exchange(const Exchange& e, EncodedBatch& out) {
    RowWriter w(out.rows, true);
    append_row(e, out, w);
}

namespace {

// Field n (1-based) of presentation rdata: separated by spaces; a quoted string (which may
// hold spaces) and a backslash escape stay inside their field.
std::string_view nth_field(std::string_view s, std::size_t n) {
    std::size_t i = 0, k = 0;
    while (i < s.size()) {
        while (i < s.size() && s[i] == ' ') ++i;
        if (i >= s.size()) break;
        std::size_t start = i;
        bool quoted = false;
        while (i < s.size() && (quoted || s[i] != ' ')) {
            if (s[i] == '\\' && i + 1 < s.size()) {
                i += 2;
                continue;
            }
            if (s[i] == '"') quoted = !quoted;
            ++i;
        }
        if (++k == n) return s.substr(start, i - start);
    }
    return {};
}

}  // namespace

namespace {

// The field of the rdata that holds the target name (see rdata_target_name), before it is
// normalized; empty when there is none.
std::string_view target_field(std::uint16_t type, std::string_view rdata) {
    std::size_t field = 0;
    switch (type) {
    case 2: case 5: case 12: case 39: field = 1; break;     // NS CNAME PTR DNAME
    case 15: case 18: case 21: case 36: field = 2; break;   // MX AFSDB RT KX
    case 64: case 65: field = 2; break;                     // SVCB HTTPS
    case 33: field = 4; break;                              // SRV
    case 35: field = 6; break;                              // NAPTR
    default: return {};
    }
    if (rdata.starts_with("\\#")) return {};
    std::string_view target = field == 1 ? rdata : nth_field(rdata, field);
    if (target.empty() || target == "." || target.front() == '"') return {};
    return target;
}

// Eight bytes at a time, finished by murmur3's mixer: good enough spread for the low bits
// the table uses, cheaper than std::hash on these short strings.
std::uint64_t hash_bytes(std::uint64_t h, std::string_view s) noexcept {
    constexpr std::uint64_t k = 0x9e3779b97f4a7c15ull;
    const char* d = s.data();
    std::size_t n = s.size();
    for (; n >= 8; d += 8, n -= 8) h = std::rotl((h ^ swar::load(d)) * k, 29);
    std::uint64_t tail = 0;
    for (std::size_t i = 0; i < n; ++i) tail |= static_cast<std::uint64_t>(static_cast<unsigned char>(d[i])) << (8 * i);
    return std::rotl((h ^ tail ^ (static_cast<std::uint64_t>(s.size()) << 56)) * k, 29);
}

std::uint64_t pdns_hash(std::string_view rrname, std::uint16_t rrtype, std::string_view rdata) noexcept {
    std::uint64_t x = hash_bytes(hash_bytes(rrtype, rrname), rdata);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

}  // namespace

std::string rdata_target_name(std::uint16_t type, std::string_view rdata) {
    std::string_view target = target_field(type, rdata);
    return target.empty() ? std::string() : stored_name(target);
}

PdnsAggregate::Str PdnsAggregate::put(std::string_view s) {
    Str out{static_cast<std::uint32_t>(arena_.size()), static_cast<std::uint32_t>(s.size())};
    arena_.append(s);
    return out;
}

PdnsAggregate::Str PdnsAggregate::intern(std::string_view s, Str& last) {
    if (s.empty()) return {};
    if (str(last) != s) last = put(s);
    return last;
}

void PdnsAggregate::grow(std::size_t at_least) {
    std::size_t n = std::max<std::size_t>(64, slots_.size() * 2);
    while (n < at_least) n *= 2;
    slots_.assign(n, 0);
    std::size_t mask = n - 1;
    for (std::uint32_t i = 0; i < entries_.size(); ++i) {
        std::size_t at = entries_[i].hash & mask;
        while (slots_[at]) at = (at + 1) & mask;
        slots_[at] = i + 1;
    }
}

std::size_t PdnsAggregate::probe(std::uint64_t hash, std::string_view rrname, std::uint16_t rrtype,
                                 std::string_view rdata) const noexcept {
    const std::size_t mask = slots_.size() - 1;
    std::size_t at = hash & mask;
    for (; slots_[at]; at = (at + 1) & mask) {
        const Entry& e = entries_[slots_[at] - 1];
        if (e.hash == hash && e.rrtype == rrtype && str(e.rrname) == rrname && str(e.rdata) == rdata) break;
    }
    return at;
}

std::uint32_t PdnsAggregate::slot_for(std::uint64_t hash, std::string_view rrname, std::uint16_t rrtype,
                                      std::string_view rdata, bool& fresh) {
    // At most half full: short probe sequences.
    if ((entries_.size() + 1) * 2 > slots_.size()) grow();
    const std::size_t at = probe(hash, rrname, rrtype, rdata);
    if (slots_[at]) {
        fresh = false;
        return slots_[at] - 1;
    }
    auto index = static_cast<std::uint32_t>(entries_.size());
    Entry& e = entries_.emplace_back();
    e.hash = hash;
    e.first_us = e.last_us = 0;
    e.count = 0;
    e.rrtype = rrtype;
    e.rrname = put(rrname);
    e.rdata = put(rdata);
    slots_[at] = index + 1;
    fresh = true;
    return index;
}

void PdnsAggregate::reserve(std::size_t entries) {
    if (entries_.capacity() >= entries) return;
    entries_.reserve(entries);
    arena_.reserve(entries * 48);  // names and rdata: ~20 bytes each
    if (slots_.size() < entries * 2) grow(entries * 2);
}

void PdnsAggregate::clear() noexcept {
    if (!entries_.empty()) std::fill(slots_.begin(), slots_.end(), 0);
    entries_.clear();
    arena_.clear();
    last_sensor_ = last_bailiwick_ = {};
}

void PdnsAggregate::add(const Exchange& e) {
    if (!e.response || !e.response->response) return;
    const DnsMessage& r = *e.response->response;
    if (r.answers.empty()) return;
    std::int64_t t = e.response->response_time_ns >= 0 ? ns_to_us(e.response->response_time_ns)
                                                       : exchange_time_us(e);
    // Scratch strings reused across calls (per thread: workers aggregate in parallel), for
    // the few strings that are not their own stored form.
    thread_local std::string rrname_store, rdata_store, target, sensor_store, bailiwick_store;
    const std::string_view sensor = sanitized_view(sensor_store, e.response->identity, true);
    const std::string_view bailiwick =
        e.response->query_zone.empty() ? std::string_view() : stored_name_view(bailiwick_store, e.response->query_zone);
    // This exchange's bailiwick and sensor as strings of the aggregate, made on first use.
    Str bailiwick_str, sensor_str;
    for (const auto& rr : r.answers) {
        if (rr.rclass != 1) continue;  // IN only: other classes are not passive DNS data
        const std::string_view rrname = stored_name_view(rrname_store, rr.name);
        // Lone-name rdata (CNAME, NS, PTR, DNAME) is stored like owner names so pdns_rdata can
        // look it up by name.
        const std::string_view rdata = rr.type == 5 || rr.type == 2 || rr.type == 12 || rr.type == 39
                                           ? stored_name_view(rdata_store, rr.rdata)
                                           : sanitized_view(rdata_store, rr.rdata, false);
        // The unique btree index takes rows up to ~2.7 kB; longer records (big TXT) would fail
        // the whole upsert, so they stay out of pdns (they remain in exchange.answers).
        if (rrname.size() + rdata.size() > 2000) continue;
        bool fresh = false;
        std::uint32_t i = slot_for(pdns_hash(rrname, rr.type, rdata), rrname, rr.type, rdata, fresh);
        Entry& v = entries_[i];
        if (fresh) {
            v.first_us = v.last_us = t;
            if (std::string_view field = target_field(rr.type, rdata); !field.empty()) {
                stored_name_into(target, field);
                v.rdata_name = put(target);
            }
        } else {
            v.first_us = std::min(v.first_us, t);
            v.last_us = std::max(v.last_us, t);
        }
        ++v.count;
        // The latest exchange's bailiwick and sensor win (the same text when they are equal).
        if (!bailiwick.empty()) {
            if (!bailiwick_str.len) bailiwick_str = intern(bailiwick, last_bailiwick_);
            v.bailiwick = bailiwick_str;
        }
        if (!sensor.empty()) {
            if (!sensor_str.len) sensor_str = intern(sensor, last_sensor_);
            v.sensor_id = sensor_str;
        }
    }
}

void PdnsAggregate::merge(PdnsAggregate&& later) {
    if (entries_.empty()) {
        // Into an empty aggregate: taken whole (the same entries in the same order as adding
        // them one by one), `later` keeping this one's storage.
        entries_.swap(later.entries_);
        slots_.swap(later.slots_);
        arena_.swap(later.arena_);
        std::swap(last_sensor_, later.last_sensor_);
        std::swap(last_bailiwick_, later.last_bailiwick_);
        later.clear();
        return;
    }
    for (const Entry& v : later.entries_) {
        bool fresh = false;
        std::uint32_t i = slot_for(v.hash, later.str(v.rrname), v.rrtype, later.str(v.rdata), fresh);
        Entry& d = entries_[i];
        if (fresh) {
            d.first_us = v.first_us;
            d.last_us = v.last_us;
        } else {
            d.first_us = std::min(d.first_us, v.first_us);
            d.last_us = std::max(d.last_us, v.last_us);
        }
        d.count += v.count;
        if (v.bailiwick.len && str(d.bailiwick) != later.str(v.bailiwick))
            d.bailiwick = intern(later.str(v.bailiwick), last_bailiwick_);
        if (v.sensor_id.len && str(d.sensor_id) != later.str(v.sensor_id))
            d.sensor_id = intern(later.str(v.sensor_id), last_sensor_);
        if (!d.rdata_name.len && v.rdata_name.len) d.rdata_name = put(later.str(v.rdata_name));
    }
    later.clear();
}

PdnsAggregate::View PdnsAggregate::view(const Entry& e) const {
    return View{str(e.rrname), type_text(e.rrtype), str(e.rdata), e.first_us, e.last_us, e.count,
                str(e.bailiwick), str(e.sensor_id), str(e.rdata_name)};
}

std::optional<PdnsAggregate::View> PdnsAggregate::find(std::string_view rrname, std::uint16_t rrtype,
                                                       std::string_view rdata) const {
    if (slots_.empty()) return std::nullopt;
    const std::size_t at = probe(pdns_hash(rrname, rrtype, rdata), rrname, rrtype, rdata);
    if (!slots_[at]) return std::nullopt;
    return view(entries_[slots_[at] - 1]);
}

namespace {

// Bytes [at, at + 8) of s as a big-endian number, zero-padded past the end: comparing two of
// them orders the strings as a bytewise comparison would, or ties.
std::uint64_t head8(std::string_view s, std::size_t at) noexcept {
    if (at + 8 <= s.size()) {
        std::uint64_t h = swar::load(s.data() + at);
        return std::endian::native == std::endian::little ? __builtin_bswap64(h) : h;
    }
    std::uint64_t h = 0;
    for (std::size_t i = at; i < at + 8; ++i) h = (h << 8) | (i < s.size() ? static_cast<unsigned char>(s[i]) : 0u);
    return h;
}

}  // namespace

void PdnsAggregate::sorted_order(std::vector<std::uint32_t>& order) const {
    // By (rrname, rrtype text, rdata) bytewise: the order of the upsert's conflict key under
    // COLLATE "C". Sorted as keys holding rrname's first 24 bytes as numbers, the rank of the
    // type's text among the types present and rdata's first 8 bytes, so that nearly all
    // comparisons are of integers, not strings.
    struct Key {
        std::array<std::uint64_t, 3> name;
        std::uint64_t rdata;
        std::uint32_t name_size, type_rank, entry;
    };
    constexpr std::size_t name_bytes = sizeof(Key::name);
    std::vector<Key> keys(entries_.size());
    // Types present, numbered in order of appearance: nearly all below 256.
    std::vector<std::uint16_t> types;
    std::array<std::uint32_t, 256> common;
    common.fill(UINT32_MAX);
    std::unordered_map<std::uint16_t, std::uint32_t> rare;
    for (std::uint32_t i = 0; i < entries_.size(); ++i) {
        const Entry& e = entries_[i];
        std::uint32_t& number = e.rrtype < 256 ? common[e.rrtype] : rare.try_emplace(e.rrtype, UINT32_MAX).first->second;
        if (number == UINT32_MAX) {
            number = static_cast<std::uint32_t>(types.size());
            types.push_back(e.rrtype);
        }
        const std::string_view name = str(e.rrname);
        keys[i] = Key{{head8(name, 0), head8(name, 8), head8(name, 16)}, head8(str(e.rdata), 0), e.rrname.len, number, i};
    }
    std::vector<std::uint32_t> by_text(types.size());
    for (std::uint32_t k = 0; k < by_text.size(); ++k) by_text[k] = k;
    std::sort(by_text.begin(), by_text.end(),
              [&](std::uint32_t a, std::uint32_t b) { return type_text(types[a]) < type_text(types[b]); });
    std::vector<std::uint32_t> rank(types.size());
    for (std::uint32_t r = 0; r < by_text.size(); ++r) rank[by_text[r]] = r;
    for (Key& k : keys) k.type_rank = rank[k.type_rank];

    std::sort(keys.begin(), keys.end(), [this](const Key& a, const Key& b) {
        for (std::size_t k = 0; k < a.name.size(); ++k)  // integer compares, not a memcmp call
            if (a.name[k] != b.name[k]) return a.name[k] < b.name[k];
        // Equal prefixes: the names are equal when their sizes are and the prefix is all of
        // them; else the whole names decide.
        if (a.name_size != b.name_size || a.name_size > name_bytes) {
            const int c = str(entries_[a.entry].rrname).compare(str(entries_[b.entry].rrname));
            if (c != 0) return c < 0;
        }
        if (a.type_rank != b.type_rank) return a.type_rank < b.type_rank;
        if (a.rdata != b.rdata) return a.rdata < b.rdata;
        return str(entries_[a.entry].rdata) < str(entries_[b.entry].rdata);
    });
    order.resize(keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) order[i] = keys[i].entry;
}

void PdnsAggregate::encode_rows(const std::vector<std::uint32_t>& order, std::string& out) const {
    out.reserve(out.size() + order.size() * 120);
    RowWriter w(out, true);
    for (std::uint32_t i : order) {
        const Entry& v = entries_[i];
        w.begin_row(10);
        w.text(str(v.rrname));
        w.text(type_text(v.rrtype));
        w.text(str(v.rdata));
        if (!((v.rrtype == 1 || v.rrtype == 28) && w.inet_text(str(v.rdata)))) w.null();
        w.timestamptz_unix_us(v.first_us);
        w.timestamptz_unix_us(v.last_us);
        w.int8(static_cast<std::int64_t>(v.count));
        if (!v.bailiwick.len) w.null(); else w.text(str(v.bailiwick));
        if (!v.sensor_id.len) w.null(); else w.text(str(v.sensor_id));
        if (!v.rdata_name.len) w.null(); else w.text(str(v.rdata_name));
    }
}

std::string PdnsAggregate::encode() const {
    std::vector<std::uint32_t> order;
    sorted_order(order);
    std::string out;
    encode_rows(order, out);
    return out;
}

void PdnsAggregate::encode(std::string& out) {
    sorted_order(order_);
    encode_rows(order_, out);
}

std::uint64_t EncodedBatch::message_total() const noexcept { return message_total(0, size()); }

std::uint64_t EncodedBatch::message_total(std::size_t lo, std::size_t hi) const noexcept {
    std::uint64_t n = 0;
    for (std::size_t i = lo; i < hi; ++i) n += messages[i];
    return n;
}

std::string EncodedBatch::copy_payload(std::size_t lo, std::size_t hi) const {
    std::size_t begin = lo ? row_end[lo - 1] : 0;
    std::size_t end = hi ? row_end[hi - 1] : 0;
    std::string out;
    out.reserve(header().size() + (end - begin) + trailer().size());
    out.append(header());
    out.append(rows, begin, end - begin);
    out.append(trailer());
    return out;
}

std::string EncodedBatch::pdns_payload() const {
    std::string out;
    out.reserve(header().size() + pdns_rows.size() + trailer().size());
    out.append(header());
    out.append(pdns_rows);
    out.append(trailer());
    return out;
}

EncodedBatch EncodedBatch::subset(const std::vector<bool>& done, bool keep_pdns) const {
    EncodedBatch out;
    for (std::size_t i = 0; i < size(); ++i) {
        if (done[i]) continue;
        std::size_t begin = i ? row_end[i - 1] : 0;
        out.rows.append(rows, begin, row_end[i] - begin);
        out.row_end.push_back(static_cast<std::uint32_t>(out.rows.size()));
        out.messages.push_back(messages[i]);
        out.times_us.push_back(times_us[i]);
    }
    if (keep_pdns) {
        out.pdns_rows = pdns_rows;
        out.pdns_count = pdns_count;
        out.pdns_format = pdns_format;
    }
    return out;
}

void EncodedBatch::clear() {
    rows.clear();
    row_end.clear();
    messages.clear();
    times_us.clear();
    pdns_rows.clear();
    pdns_count = 0;
    pdns_format = 2;
    pdns_map.clear();
}

void encode_into(EncodedBatch& out, std::span<const Exchange> exchanges, bool with_pdns) {
    // Room for a worker's hand-off (48 exchanges, see worker_pool.cpp) and then some from the
    // start: a reused batch then rarely grows, and the rows stay below the mmap threshold.
    std::size_t n = std::max<std::size_t>(out.size() + exchanges.size(), 64);
    out.rows.reserve(n * 400);  // typical rows are 250..400 bytes
    out.row_end.reserve(n);
    out.messages.reserve(n);
    out.times_us.reserve(n);
    if (with_pdns) out.pdns_map.reserve(n);
    RowWriter w(out.rows, true);
    for (const auto& e : exchanges) {
        append_row(e, out, w);
        if (with_pdns) out.pdns_map.add(e);
    }
}

EncodedBatch encode_batch(std::span<const Exchange> exchanges, bool with_pdns) {
    return encode_batch(std::span<const std::vector<Exchange>>(), with_pdns, exchanges);
}

EncodedBatch encode_batch(std::span<const std::vector<Exchange>> chunks, bool with_pdns,
                          std::span<const Exchange> more, bool pdns_as_map) {
    EncodedBatch out;
    for (const auto& c : chunks) encode_into(out, c, with_pdns);
    encode_into(out, more, with_pdns);
    if (!pdns_as_map) out.encode_pdns();
    return out;
}

void EncodedBatch::encode_pdns() {
    if (pdns_map.empty()) return;
    pdns_rows.clear();
    pdns_map.encode(pdns_rows);
    pdns_count = static_cast<std::uint32_t>(pdns_map.size());
    pdns_format = 2;
    pdns_map.clear();
}

EncodedBatch EncodedBatch::concat(std::span<const std::unique_ptr<EncodedBatch>> parts) {
    EncodedBatch out;
    std::size_t bytes = 0, rows = 0;
    for (const auto& p : parts) {
        bytes += p->rows.size();
        rows += p->size();
    }
    out.rows.reserve(bytes);
    out.row_end.reserve(rows);
    out.messages.reserve(rows);
    out.times_us.reserve(rows);
    for (const auto& p : parts) {
        auto base = static_cast<std::uint32_t>(out.rows.size());
        out.rows += p->rows;
        for (std::uint32_t end : p->row_end) out.row_end.push_back(base + end);
        out.messages.insert(out.messages.end(), p->messages.begin(), p->messages.end());
        out.times_us.insert(out.times_us.end(), p->times_us.begin(), p->times_us.end());
    }
    return out;
}

}  // namespace dnstap_collector::copy
