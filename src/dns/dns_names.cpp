// Domain names to presentation format, and the mnemonics of types, classes, rcodes, opcodes.
// Hand-written rather than knot_dname_to_str: we need the name as sent (case kept), no
// trailing dot, and a guarantee of plain ASCII output, without allocating. read_name can also
// escape as knot_dname_to_str does, for the rdata names parse_dns prints without libknot.

#include <array>
#include <cstdio>
#include <cstring>

extern "C" {
#include <libknot/libknot.h>
}

#include "dns/dns_internal.hpp"
#include "dnstap_collector/dns.hpp"

namespace dnstap_collector {
namespace dns_detail {

namespace {

constexpr std::size_t max_name_wire = 255;  // RFC 1035 2.3.4, length octets included

// What read_name writes for each octet of a label: `out` is the octet itself (a printable
// character other than an escape; an upper-case letter maps to its lower-case form in the
// lowercasing tables), `backslash` for a backslash before the octet, `ddd` for \DDD; `changed`
// is non-zero where `out` is not simply the octet. Table lookups instead of a chain of
// comparisons per octet, and labels without such octets (nearly all) copied whole: names are
// a good part of all the text we make.
constexpr char ddd = 0;
constexpr char backslash = 1;

struct EscapeTable {
    std::array<char, 256> out{};
    std::array<std::uint8_t, 256> changed{};
};

// Octets BIND also escapes with a backslash in presentation format; escaping the same set
// keeps our text equal to dnstap-read's. Outside 0x21..0x7E: \DDD.
constexpr bool needs_backslash(std::uint8_t c) noexcept {
    return c == '.' || c == '\\' || c == '"' || c == '(' || c == ')' || c == ';' || c == '@' ||
           c == '$';
}

// knot_dname_to_str, which prints the names inside rdata: letters, digits and "-_*/" as
// they are, other ASCII punctuation except '#' after a backslash, everything else \DDD.
constexpr bool libknot_plain(std::uint8_t c) noexcept {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           c == '-' || c == '_' || c == '*' || c == '/';
}
constexpr bool ascii_punct(std::uint8_t c) noexcept {
    return c > 0x20 && c < 0x7F && !(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'z') &&
           !(c >= 'A' && c <= 'Z');
}

constexpr EscapeTable make_table(NameStyle style, bool lowercase) {
    EscapeTable t{};
    for (unsigned i = 0; i < 256; ++i) {
        const auto c = static_cast<std::uint8_t>(i);
        char e = ddd;
        if (style == NameStyle::presentation) {
            if (c > 0x20 && c < 0x7F) e = needs_backslash(c) ? backslash : static_cast<char>(c);
        } else if (libknot_plain(c)) {
            e = static_cast<char>(c);
        } else if (ascii_punct(c) && c != '#') {
            e = backslash;
        }
        if (lowercase && c >= 'A' && c <= 'Z') e = static_cast<char>(c + ('a' - 'A'));
        t.out[i] = e;
        t.changed[i] = e == ddd || e == backslash || e != static_cast<char>(c);
    }
    return t;
}

constexpr EscapeTable presentation_kept = make_table(NameStyle::presentation, false);
constexpr EscapeTable presentation_lower = make_table(NameStyle::presentation, true);
constexpr EscapeTable libknot_kept = make_table(NameStyle::libknot, false);
constexpr EscapeTable libknot_lower = make_table(NameStyle::libknot, true);

// Appends "\DDD" to p and returns the new end.
inline char* put_ddd(char* p, std::uint8_t c) noexcept {
    p[0] = '\\';
    p[1] = static_cast<char>('0' + c / 100);
    p[2] = static_cast<char>('0' + (c / 10) % 10);
    p[3] = static_cast<char>('0' + c % 10);
    return p + 4;
}

// The walk shared by read_name and skip_name: same checks, text only when `Write`.
template <bool Write>
NameResult walk_name(const std::uint8_t* msg, std::size_t len, std::size_t pos, std::string* out,
                     const EscapeTable* table, bool allow_pointers) {
    NameResult result;
    // Worst case: 255 octets of name, each as \DDD; 8 more for the word copies of labels.
    std::array<char, max_name_wire * 4 + 16> buf;
    char* p = buf.data();
    std::size_t wire_len = 0;  // uncompressed length so far, length octets included
    bool jumped = false;
    bool first = true;
    std::size_t run_start = pos;

    auto finish = [&](NameError e) {
        if constexpr (Write) out->append(buf.data(), static_cast<std::size_t>(p - buf.data()));
        result.error = e;
        if (!jumped && e != NameError::none) result.next = pos;
        return result;
    };

    for (;;) {
        if (pos >= len) return finish(NameError::truncated);
        const std::uint8_t l = msg[pos];
        if (l == 0) {
            if constexpr (Write)
                if (first) *p++ = '.';  // the root
            if (!jumped) result.next = pos + 1;
            result.length = wire_len + 1;
            return finish(NameError::none);
        }
        switch (l & 0xC0) {
        case 0xC0: {
            if (!allow_pointers) return finish(NameError::bad_compression);
            if (pos + 1 >= len) return finish(NameError::truncated);
            const std::size_t target = (static_cast<std::size_t>(l & 0x3F) << 8) | msg[pos + 1];
            // Only to before where the current run of labels began: that bound strictly
            // decreases with every jump, so the walk ends (a suffix is always written first).
            if (target >= run_start) return finish(NameError::bad_compression);
            run_start = target;
            if (!jumped) result.next = pos + 2;
            jumped = true;
            result.compressed = true;
            pos = target;
            continue;
        }
        case 0x00: break;
        default: return finish(NameError::bad_label);  // 0x40 / 0x80: extended label types
        }
        wire_len += 1 + l;
        if (wire_len + 1 > max_name_wire) return finish(NameError::name_too_long);
        if (pos + 1 + l > len) return finish(NameError::truncated);
        if constexpr (Write) {
            if (!first) *p++ = '.';
            const EscapeTable& t = *table;
            const std::uint8_t* const c = msg + pos + 1;
            std::uint8_t changed = 0;
            for (std::size_t i = 0; i < l; ++i) changed |= t.changed[c[i]];
            if (changed == 0) {
                // The usual label, copied as it is: in 8-octet words when the bytes after it
                // can be read too (the excess lands in buf past p, overwritten or dropped).
                if (len - (pos + 1) >= (l + 7u) / 8 * 8) {
                    for (std::size_t i = 0; i < l; i += 8) std::memcpy(p + i, c + i, 8);
                } else {
                    std::memcpy(p, c, l);
                }
                p += l;
            } else {
                for (std::size_t i = 0; i < l; ++i) {
                    const char o = t.out[c[i]];
                    if (o > backslash) {
                        *p++ = o;
                    } else if (o == backslash) {
                        p[0] = '\\';
                        p[1] = static_cast<char>(c[i]);
                        p += 2;
                    } else {
                        p = put_ddd(p, c[i]);
                    }
                }
            }
        }
        first = false;
        pos += 1 + l;
    }
}

}  // namespace

std::string_view to_string(NameError e) noexcept {
    switch (e) {
    case NameError::none: return "";
    case NameError::truncated: return "truncated";
    case NameError::bad_compression: return "bad_compression";
    case NameError::name_too_long: return "name_too_long";
    case NameError::bad_label: return "bad_name";
    }
    return "bad_name";
}

NameResult read_name(const std::uint8_t* msg, std::size_t len, std::size_t pos, std::string& out,
                     bool lowercase, bool allow_pointers, NameStyle style) {
    const EscapeTable* table = style == NameStyle::presentation
                                   ? (lowercase ? &presentation_lower : &presentation_kept)
                                   : (lowercase ? &libknot_lower : &libknot_kept);
    return walk_name<true>(msg, len, pos, &out, table, allow_pointers);
}

NameResult skip_name(const std::uint8_t* msg, std::size_t len, std::size_t pos) {
    return walk_name<false>(msg, len, pos, nullptr, nullptr, true);
}

void append_escaped_ascii(std::string& out, std::string_view s) {
    // Usually nothing needs escaping: one scan, one append.
    std::size_t plain = 0;
    while (plain < s.size()) {
        const auto c = static_cast<std::uint8_t>(s[plain]);
        if (c < 0x20 || c >= 0x7F || c == '\\') break;
        ++plain;
    }
    out.append(s.data(), plain);
    s.remove_prefix(plain);
    for (const char sc : s) {
        const auto c = static_cast<std::uint8_t>(sc);
        if (c >= 0x20 && c < 0x7F) {
            if (c == '\\') out.push_back('\\');
            out.push_back(sc);
        } else {
            char b[4];
            put_ddd(b, c);
            out.append(b, 4);
        }
    }
}

std::size_t format_ipv6(const std::uint8_t* a, char* out) noexcept {
    static constexpr char hex[] = "0123456789abcdef";
    std::uint16_t words[8];
    for (int i = 0; i < 8; ++i)
        words[i] = static_cast<std::uint16_t>((a[2 * i] << 8) | a[2 * i + 1]);
    // Longest run of zero words (first one on ties); runs of one are not compressed.
    int best_base = -1, best_len = 0;
    for (int i = 0; i < 8;) {
        if (words[i] != 0) {
            ++i;
            continue;
        }
        int j = i;
        while (j < 8 && words[j] == 0) ++j;
        if (j - i > best_len) {
            best_base = i;
            best_len = j - i;
        }
        i = j;
    }
    if (best_len < 2) best_base = -1;

    char* p = out;
    for (int i = 0; i < 8; ++i) {
        if (best_base != -1 && i >= best_base && i < best_base + best_len) {
            if (i == best_base) *p++ = ':';
            continue;
        }
        if (i != 0) *p++ = ':';
        if (i == 6 && best_base == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff))) {
            for (int k = 12; k < 16; ++k) {  // embedded IPv4
                const std::uint8_t b = a[k];
                if (b >= 100) *p++ = static_cast<char>('0' + b / 100);
                if (b >= 10) *p++ = static_cast<char>('0' + (b / 10) % 10);
                *p++ = static_cast<char>('0' + b % 10);
                if (k < 15) *p++ = '.';
            }
            return static_cast<std::size_t>(p - out);
        }
        bool started = false;
        for (int shift = 12; shift >= 0; shift -= 4) {
            const unsigned nibble = (words[i] >> shift) & 0xF;
            if (nibble != 0 || started || shift == 0) {
                *p++ = hex[nibble];
                started = true;
            }
        }
    }
    if (best_base != -1 && best_base + best_len == 8) *p++ = ':';
    return static_cast<std::size_t>(p - out);
}

}  // namespace dns_detail

bool name_to_text(std::span<const std::uint8_t> wire_name, std::string& out, bool lowercase) {
    out.clear();
    if (wire_name.empty()) return false;
    const auto r = dns_detail::read_name(wire_name.data(), wire_name.size(), 0, out, lowercase,
                                         /*allow_pointers=*/false);
    // A stand-alone name must be exactly one name: no pointers, nothing after the root label.
    return r.error == dns_detail::NameError::none && r.next == wire_name.size();
}

std::string lowercase_name(std::string_view presentation) {
    std::string s(presentation);
    // Escapes are "\c" or "\DDD": lowercasing an escaped letter keeps the name equal
    // (names compare case-insensitively) and digits are untouched.
    for (char& c : s)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + ('a' - 'A'));
    return s;
}

std::string type_to_text(std::uint16_t type) {
    char buf[32];
    if (knot_rrtype_to_string(type, buf, sizeof buf) > 0) return buf;
    std::snprintf(buf, sizeof buf, "TYPE%u", static_cast<unsigned>(type));
    return buf;
}

std::string class_to_text(std::uint16_t rclass) {
    switch (rclass) {
    case 1: return "IN";
    case 3: return "CH";
    case 4: return "HS";
    case 254: return "NONE";
    case 255: return "ANY";
    default: return "CLASS" + std::to_string(rclass);
    }
}

std::string rcode_to_text(std::uint16_t rcode) {
    // IANA "DNS RCODEs"; 16 is BADVERS in an OPT context, which is where extended rcodes
    // come from here (BADSIG only appears inside TSIG records).
    static constexpr std::array<const char*, 24> names = {
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP",   "REFUSED",
        "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH",  "NOTZONE",  "DSOTYPENI",
        nullptr,   nullptr,   nullptr,   nullptr,    "BADVERS",  "BADKEY",
        "BADTIME", "BADMODE", "BADNAME", "BADALG",   "BADTRUNC", "BADCOOKIE",
    };
    if (rcode < names.size() && names[rcode] != nullptr) return names[rcode];
    return "RCODE" + std::to_string(rcode);
}

std::string opcode_to_text(std::uint8_t opcode) {
    switch (opcode) {
    case 0: return "QUERY";
    case 1: return "IQUERY";
    case 2: return "STATUS";
    case 4: return "NOTIFY";
    case 5: return "UPDATE";
    case 6: return "DSO";
    default: return "OPCODE" + std::to_string(opcode);
    }
}

std::string flags_to_text(std::uint16_t flags) {
    static constexpr std::array<std::pair<std::uint16_t, const char*>, 7> bits = {{
        {0x8000, "qr"}, {0x0400, "aa"}, {0x0200, "tc"}, {0x0100, "rd"},
        {0x0080, "ra"}, {0x0020, "ad"}, {0x0010, "cd"},
    }};
    std::string s;
    for (const auto& [bit, name] : bits) {
        if (!(flags & bit)) continue;
        if (!s.empty()) s.push_back(' ');
        s += name;
    }
    return s;
}

}  // namespace dnstap_collector
