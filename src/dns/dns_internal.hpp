// Helpers shared by the files of src/dns (not part of the public contract).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace dnstap_collector {
struct DnsMessage;
}

namespace dnstap_collector::dns_detail {

enum class NameError : std::uint8_t { none, truncated, bad_compression, name_too_long, bad_label };
std::string_view to_string(NameError e) noexcept;

struct NameResult {
    NameError error = NameError::none;
    std::size_t next = 0;     // offset just past the name where it started (not where pointers led)
    bool compressed = false;  // a compression pointer was followed
    std::size_t length = 0;   // uncompressed wire length, root label included (when no error)
};

// How the octets of a label are written. `presentation` is ours (as BIND's dnstap-read):
// a backslash before . \ " ( ) ; @ $, \DDD outside 0x21..0x7E. `libknot` is
// knot_dname_to_str's, which prints the names inside rdata: letters, digits and "-_*/" as
// they are, a backslash before other ASCII punctuation but '#', \DDD for the rest.
enum class NameStyle : std::uint8_t { presentation, libknot };

// Reads the name at `pos` of the message `msg[0..len)` and appends its presentation form to
// `out`. Pointers are followed only when `allow_pointers`, and only to before the start of
// the labels that led to them, which makes loops impossible. On error `out` holds the labels
// read so far.
NameResult read_name(const std::uint8_t* msg, std::size_t len, std::size_t pos, std::string& out,
                     bool lowercase, bool allow_pointers = true,
                     NameStyle style = NameStyle::presentation);

// read_name's checks (pointers allowed) without the text: for names only validated.
NameResult skip_name(const std::uint8_t* msg, std::size_t len, std::size_t pos);

// Appends `s` with every octet outside printable ASCII as \DDD and backslash as "\\", so the
// result is plain ASCII whatever the input (it goes into PostgreSQL text columns).
void append_escaped_ascii(std::string& out, std::string_view s);

// IPv6 text exactly as glibc's inet_ntop prints it (RFC 5952 zero compression, embedded
// IPv4 for ::a.b.c.d and ::ffff:a.b.c.d), without its sprintf calls. `out` needs 46 bytes;
// returns the length written (no terminator).
std::size_t format_ipv6(const std::uint8_t* address, char* out) noexcept;

// parse_dns without its hand-written paths for common messages: every record through
// knot_pkt_parse. The reference those paths are tested against.
bool parse_dns_with_libknot(std::span<const std::uint8_t> wire, DnsMessage& out);

// parse_dns that also tells whether its records were read by a hand-written path (false when
// there are none, or libknot read them): for tests of what those paths cover.
bool parse_dns(std::span<const std::uint8_t> wire, DnsMessage& out, bool& records_direct);

}  // namespace dnstap_collector::dns_detail
