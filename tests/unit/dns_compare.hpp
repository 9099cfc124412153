// parse_dns against dns_detail::parse_dns_with_libknot: the hand-written paths for common
// messages must give exactly what libknot gives, error included. Shared by the DNS tests.
#pragma once

#include <catch2/catch.hpp>

#include <cstdio>
#include <span>
#include <string>

#include "dns/dns_internal.hpp"
#include "dnstap_collector/dns.hpp"

namespace dns_compare {

// Every field of a parse, one per line, so a failed comparison shows where the two differ.
inline std::string describe(bool ok, const dnstap_collector::DnsMessage& m) {
    std::string s;
    auto field = [&](const char* name, const std::string& value) {
        s += name;
        s += '=';
        s += value;
        s += '\n';
    };
    field("ok", ok ? "true" : "false");
    field("error", m.error);
    field("size", std::to_string(m.size));
    field("header", std::to_string(m.id) + " " + std::to_string(m.flags) + " " +
                        std::to_string(m.qdcount) + " " + std::to_string(m.ancount) + " " +
                        std::to_string(m.nscount) + " " + std::to_string(m.arcount));
    field("rcode", std::to_string(m.rcode));
    field("question", std::to_string(m.has_question) + " " + m.qname + " " +
                          std::to_string(m.qtype) + " " + std::to_string(m.qclass));
    field("edns", std::to_string(m.has_edns) + " " + std::to_string(m.edns_udp_size) + " " +
                      std::to_string(m.edns_version) + " " + std::to_string(m.edns_do));
    field("ecs", m.ecs);
    field("ede", std::to_string(m.ede_code) + " " + m.ede_text);
    for (const auto& rr : m.answers)
        field("answer", rr.name + " " + std::to_string(rr.type) + " " + std::to_string(rr.rclass) +
                            " " + std::to_string(rr.ttl) + " " + rr.rdata);
    return s;
}

inline std::string hex(std::span<const std::uint8_t> wire) {
    std::string s;
    char b[3];
    for (const std::uint8_t c : wire) {
        std::snprintf(b, sizeof b, "%02x", c);
        s += b;
    }
    return s;
}

// Parses `wire` both ways and requires the same result. Returns whether the records were read
// without libknot.
inline bool check_same_as_libknot(std::span<const std::uint8_t> wire) {
    dnstap_collector::DnsMessage direct, reference;
    bool records_direct = false;
    const bool ok = dnstap_collector::dns_detail::parse_dns(wire, direct, records_direct);
    const bool ref_ok = dnstap_collector::dns_detail::parse_dns_with_libknot(wire, reference);
    const std::string got = describe(ok, direct);
    const std::string expected = describe(ref_ok, reference);
    if (got != expected) {
        INFO("message: " << hex(wire));
        INFO("records read directly: " << records_direct);
        REQUIRE(got == expected);
    }
    return records_direct;
}

}  // namespace dns_compare
