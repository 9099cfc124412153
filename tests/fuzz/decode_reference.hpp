// The decode_dnstap of before the hand-written wire reader, kept as the reference of the
// differential tests (tests/unit/test_decode_differential.cpp, fuzz_dnstap_decode): the frame
// is parsed by the code generated from proto/dnstap.proto (libprotobuf), then copied into a
// DnstapMessage. Header-only, so that both the unit tests and the fuzz target compile it.
#pragma once

#include <arpa/inet.h>
#include <sys/socket.h>

#include <climits>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dnstap.pb.h"

#include "dns/dns_internal.hpp"
#include "dnstap_collector/decode.hpp"

namespace dnstap_collector::reference {

namespace detail {

// Reused per thread: Clear() keeps the string buffers, so steady state allocates little.
inline dnstap::Dnstap& scratch() {
    thread_local dnstap::Dnstap d;
    return d;
}

// Free-form bytes (identity, version, extra, policy type) go to text columns: escaped to
// plain ASCII; the common all-printable case is a plain copy.
inline void set_text(std::string& out, const std::string& in) {
    out.clear();
    dns_detail::append_escaped_ascii(out, in);
}

// set_text for identity, version and extra, which the storage decoded into last time most
// likely holds already: escaping lengthens whatever it touches and its output is printable, so
// bytes equal to that output with no backslash need no escaping and are there already.
inline void set_same_text(std::string& out, const std::string& in) {
    if (out.size() == in.size() && std::memcmp(out.data(), in.data(), in.size()) == 0 &&
        std::memchr(out.data(), '\\', out.size()) == nullptr)
        return;
    set_text(out, in);
}

// Returns false when the length is neither 4 nor 16 (the address stays empty).
inline bool set_address(IpAddress& out, const std::string& in) {
    if (in.size() != 4 && in.size() != 16) return false;
    std::memcpy(out.bytes.data(), in.data(), in.size());
    out.length = static_cast<std::uint8_t>(in.size());
    return true;
}

// Seconds + nanoseconds since the epoch as nanoseconds, or -1 ("absent") when the pair is not
// a time: seconds past what int64 nanoseconds can hold (year 2262), or nsec >= 1e9. dnstap
// defines nsec as the fraction of the second, so a larger value is a broken sender; carrying
// it into the seconds would invent a time nobody sent (and could overflow near the limit), so
// it is treated like any other unrepresentable time. With both bounds checked the arithmetic
// cannot overflow: max_sec * 1e9 + 999'999'999 < INT64_MAX.
inline std::int64_t to_ns(std::uint64_t sec, std::uint32_t nsec) {
    constexpr std::uint64_t ns_per_sec = 1'000'000'000ULL;
    constexpr std::uint64_t max_sec = static_cast<std::uint64_t>(INT64_MAX) / ns_per_sec - 1;
    if (sec > max_sec || nsec >= ns_per_sec) return -1;
    return static_cast<std::int64_t>(sec * ns_per_sec + nsec);
}

inline std::string hex(const std::string& bytes) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s;
    s.reserve(bytes.size() * 2);
    for (const char c : bytes) {
        const auto b = static_cast<std::uint8_t>(c);
        s.push_back(digits[b >> 4]);
        s.push_back(digits[b & 0xF]);
    }
    return s;
}

inline std::span<const std::uint8_t> bytes_of(const std::string& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

inline void decode_policy(const dnstap::Policy& in, Policy& out) {
    out.present = true;
    if (in.has_type()) set_text(out.type, in.type());
    if (in.has_rule()) {
        // RPZ rules are owner names of the policy zone; anything else is kept escaped.
        if (!name_to_text(bytes_of(in.rule()), out.rule, true)) set_text(out.rule, in.rule());
    }
    if (in.has_action()) out.action = dnstap::Policy_Action_Name(in.action());
    if (in.has_match()) out.match = dnstap::Policy_Match_Name(in.match());
    if (in.has_value()) {
        const std::string& v = in.value();
        const auto match = in.has_match() ? in.match() : dnstap::Policy_Match{};
        const bool ip_match = match == dnstap::Policy_Match_CLIENT_IP ||
                              match == dnstap::Policy_Match_RESPONSE_IP ||
                              match == dnstap::Policy_Match_NS_IP;
        const bool name_match =
            match == dnstap::Policy_Match_QNAME || match == dnstap::Policy_Match_NS_NAME;
        IpAddress ip;
        if (ip_match && set_address(ip, v)) {
            out.value = ip.to_string();
        } else if (!(name_match && name_to_text(bytes_of(v), out.value, true))) {
            out.value = hex(v);
        }
    }
}

// DnsMessages a decoded message no longer needs (a query part where the next frame has none)
// wait here for the next one that does, with the capacity of their strings and answers.
inline constexpr std::size_t max_spare_dns = 64;

inline std::vector<std::unique_ptr<DnsMessage>>& spare_dns() {
    thread_local std::vector<std::unique_ptr<DnsMessage>> spares = [] {
        std::vector<std::unique_ptr<DnsMessage>> v;
        v.reserve(max_spare_dns);
        return v;
    }();
    return spares;
}

inline void park(HeapOptional<DnsMessage>& dns) noexcept {
    if (!dns) return;
    auto& spares = spare_dns();
    if (spares.size() < max_spare_dns) spares.push_back(dns.release());  // reserved: no allocation
    dns.reset();
}

inline DnsMessage& engage(HeapOptional<DnsMessage>& dns) {
    if (dns) return *dns;
    auto& spares = spare_dns();
    if (spares.empty()) return dns.emplace();
    DnsMessage& m = dns.adopt(std::move(spares.back()));
    spares.pop_back();
    return m;
}

inline void clear(Policy& p) noexcept {
    p.type.clear();
    p.rule.clear();
    p.action.clear();
    p.match.clear();
    p.value.clear();
    p.present = false;
}

// Clears every field but query and response: decode_dnstap decides about those at the end,
// reusing an engaged DnsMessage (parse_dns resets it) or parking it.
inline void reset(DnstapMessage& m) {
    // identity, version and extra: set (or cleared) by decode_dnstap on every path.
    m.type = MessageType::unknown;
    m.family = SocketFamily::unknown;
    m.protocol = SocketProtocol::unknown;
    m.query_address = {};
    m.response_address = {};
    m.bad_address_length = false;
    m.query_port = m.response_port = 0;
    m.has_query_port = m.has_response_port = false;
    m.query_time_ns = m.response_time_ns = -1;
    m.query_zone.clear();
    clear(m.policy);
    m.http_protocol = 0;
    m.frame_size = 0;
}

}  // namespace detail

inline DecodeStatus decode_dnstap_reference(std::span<const std::uint8_t> frame, DnstapMessage& out) {
    using namespace detail;
    reset(out);
    out.frame_size = static_cast<std::uint32_t>(frame.size());
    auto fail = [&](DecodeStatus status) {
        out.identity.clear();
        out.version.clear();
        out.extra.clear();
        park(out.query);
        park(out.response);
        return status;
    };
    if (frame.size() > static_cast<std::size_t>(INT_MAX)) return fail(DecodeStatus::bad_protobuf);

    dnstap::Dnstap& d = scratch();
    // Partial parse + IsInitialized(): same verdict as ParseFromArray, which would also log
    // every frame missing a required field.
    if (!d.ParsePartialFromArray(frame.data(), static_cast<int>(frame.size())) ||
        !d.IsInitialized())
        return fail(DecodeStatus::bad_protobuf);
    if (d.type() != dnstap::Dnstap_Type_MESSAGE || !d.has_message())
        return fail(DecodeStatus::not_message);

    if (d.has_identity()) set_same_text(out.identity, d.identity()); else out.identity.clear();
    if (d.has_version()) set_same_text(out.version, d.version()); else out.version.clear();
    if (d.has_extra()) set_same_text(out.extra, d.extra()); else out.extra.clear();

    const dnstap::Message& m = d.message();
    out.type = static_cast<MessageType>(m.type());  // required, and a closed enum: 1..14
    if (m.has_socket_family()) out.family = static_cast<SocketFamily>(m.socket_family());
    if (m.has_socket_protocol()) out.protocol = static_cast<SocketProtocol>(m.socket_protocol());
    if (m.has_query_address() && !set_address(out.query_address, m.query_address()))
        out.bad_address_length = true;
    if (m.has_response_address() && !set_address(out.response_address, m.response_address()))
        out.bad_address_length = true;
    out.has_query_port = m.has_query_port();
    out.query_port = m.query_port();
    out.has_response_port = m.has_response_port();
    out.response_port = m.response_port();
    if (m.has_query_time_sec()) out.query_time_ns = to_ns(m.query_time_sec(), m.query_time_nsec());
    if (m.has_response_time_sec())
        out.response_time_ns = to_ns(m.response_time_sec(), m.response_time_nsec());
    if (m.has_query_zone() && !name_to_text(bytes_of(m.query_zone()), out.query_zone, true))
        set_text(out.query_zone, m.query_zone());
    if (m.has_policy()) decode_policy(m.policy(), out.policy);
    if (m.has_http_protocol()) out.http_protocol = static_cast<std::uint8_t>(m.http_protocol());

    bool dns_ok = true;
    if (m.has_query_message())
        dns_ok &= parse_dns(bytes_of(m.query_message()), engage(out.query));
    else
        park(out.query);
    if (m.has_response_message())
        dns_ok &= parse_dns(bytes_of(m.response_message()), engage(out.response));
    else
        park(out.response);
    return dns_ok ? DecodeStatus::ok : DecodeStatus::dns_error;
}

}  // namespace dnstap_collector::reference
