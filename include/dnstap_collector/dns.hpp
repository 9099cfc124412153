// DNS wire format -> summary with presentation-format strings (libknot does the parsing and
// the rdata formatting). No I/O; fed bytes by the decode stage and by fuzzers.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dnstap_collector {

struct ResourceRecord {
    std::string name;   // presentation, lowercase, no trailing dot (root is ".")
    std::uint16_t type = 0;
    std::uint16_t rclass = 0;
    std::uint32_t ttl = 0;
    std::string rdata;  // presentation format; unknown types as "\# len hex"
};

struct DnsMessage {
    // Empty when the whole message parsed; otherwise the first problem: "truncated",
    // "bad_compression", "name_too_long", "bad_name" (extended label type), "bad_rr" (framing
    // fine but rdata/OPT refused), "trailing_data", "bad_qdcount" (more than one question),
    // "too_large" (over 65535 octets), "no_memory". The fields below hold what did parse.
    std::string error;
    std::uint32_t size = 0;
    std::uint16_t id = 0;
    std::uint16_t flags = 0;  // header bits 16..31 as on the wire (QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode)
    std::uint16_t rcode = 0;  // with the EDNS extended rcode folded in
    std::uint16_t qdcount = 0, ancount = 0, nscount = 0, arcount = 0;
    bool has_question = false;
    std::string qname;        // as sent (case kept); see lowercase_name()
    std::uint16_t qtype = 0, qclass = 0;
    std::vector<ResourceRecord> answers;  // answer section only
    bool has_edns = false;
    std::uint16_t edns_udp_size = 0;
    std::uint8_t edns_version = 0;
    bool edns_do = false;
    std::string ecs;              // EDNS Client Subnet as "addr/source_prefix", empty if none
    int ede_code = -1;            // Extended DNS Error info-code, -1 if none
    std::string ede_text;

    bool qr() const noexcept { return flags & 0x8000; }
    std::uint8_t opcode() const noexcept { return (flags >> 11) & 0xf; }
    bool aa() const noexcept { return flags & 0x0400; }
    bool tc() const noexcept { return flags & 0x0200; }
    bool rd() const noexcept { return flags & 0x0100; }
    bool ra() const noexcept { return flags & 0x0080; }
    bool ad() const noexcept { return flags & 0x0020; }
    bool cd() const noexcept { return flags & 0x0010; }
};

// Parse as much of `wire` as possible. Returns true when everything parsed.
bool parse_dns(std::span<const std::uint8_t> wire, DnsMessage& out);

// Wire-format name -> presentation (lowercase, no trailing dot, "." for root, \DDD for
// non-printable octets and escapes for '.', '\\'). Returns false if the name is malformed.
bool name_to_text(std::span<const std::uint8_t> wire_name, std::string& out, bool lowercase = true);
std::string lowercase_name(std::string_view presentation);

// Mnemonics: "A", "TYPE65280"; "IN", "CH", "CLASS7"; "NXDOMAIN", "BADCOOKIE" (23), "RCODE12";
// "QUERY", "OPCODE7".
std::string type_to_text(std::uint16_t type);
std::string class_to_text(std::uint16_t rclass);
std::string rcode_to_text(std::uint16_t rcode);
std::string opcode_to_text(std::uint8_t opcode);
// Space-separated header flags that are set: "qr aa tc rd ra ad cd".
std::string flags_to_text(std::uint16_t flags);

}  // namespace dnstap_collector
