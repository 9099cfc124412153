// dnstap protobuf frame -> DnstapMessage, with the DNS payloads parsed by parse_dns().
// The frame is read straight from its bytes (wire_reader.hpp) into views of the frame, with
// libprotobuf's semantics for proto/dnstap.proto (proto2): the last occurrence of a scalar
// field wins, embedded messages occurring more than once are merged, enum values outside
// the enum are unknown fields (the field keeps its previous value), unknown fields of every
// wire type are skipped, required fields are checked after the parse. The generated code
// (dnstap.pb.h) is the reference of the differential tests (tests/fuzz/decode_reference.hpp).

#include <arpa/inet.h>
#include <sys/socket.h>

#include <climits>
#include <cstring>
#include <memory>
#include <vector>

#include "decode/wire_reader.hpp"
#include "dns/dns_internal.hpp"
#include "dnstap_collector/decode.hpp"

namespace dnstap_collector {

namespace {

using wire::Span;
using wire::WireReader;

std::string_view view(const Span& s) noexcept {
    return {reinterpret_cast<const char*>(s.p), s.n};
}

std::span<const std::uint8_t> bytes_of(const Span& s) noexcept { return {s.p, s.n}; }

// ---- the frame as libprotobuf would parse it, with views into the frame -------------------

struct RawPolicy {
    Span type, rule, value;  // present() as has_*()
    std::uint32_t action = 0, match = 0;
    bool has_action = false, has_match = false;
};

struct RawMessage {
    Span query_address, response_address, query_message, query_zone, response_message;
    std::uint64_t query_time_sec = 0, response_time_sec = 0;
    std::uint32_t type = 0, family = 0, protocol = 0, http_protocol = 0;
    std::uint32_t query_port = 0, response_port = 0, query_time_nsec = 0, response_time_nsec = 0;
    bool has_type = false, has_family = false, has_protocol = false, has_http_protocol = false;
    bool has_query_port = false, has_response_port = false;
    bool has_query_time_sec = false, has_response_time_sec = false;
    bool has_policy = false;
    RawPolicy policy;
};

struct RawDnstap {
    Span identity, version, extra;
    bool has_type = false, has_message = false;
    RawMessage message;
};

// Wire tags: field number << 3 | wire type (0 varint, 2 length-delimited, 5 fixed32).
constexpr std::uint32_t tag_of(std::uint32_t number, std::uint32_t wire_type) {
    return number << 3 | wire_type;
}

// A tag this message does not know with this wire type: tag 0 and end-group tags end the
// parse of a message in libprotobuf, and a message that does not end at its length (or at the
// end of the frame) is rejected; anything else is skipped as an unknown field.
bool unknown(WireReader& r, std::uint32_t t, int depth) noexcept {
    if (t == 0 || (t & 7) == 4) return false;
    return r.skip_field(t, depth);
}

// A closed (proto2) enum: a value outside 1..max (compared as libprotobuf's IsValid(int),
// on the low 32 bits) goes to the unknown fields and the field keeps what it had.
bool read_enum(WireReader& r, std::uint32_t max, std::uint32_t& value, bool& has) noexcept {
    std::uint64_t v;
    if (!r.varint(v)) return false;
    const auto low = static_cast<std::uint32_t>(v);
    if (low >= 1 && low <= max) {
        value = low;
        has = true;
    }
    return true;
}

bool read_u32(WireReader& r, std::uint32_t& value, bool& has) noexcept {
    std::uint64_t v;
    if (!r.varint(v)) return false;
    value = static_cast<std::uint32_t>(v);
    has = true;
    return true;
}

bool read_u64(WireReader& r, std::uint64_t& value, bool& has) noexcept {
    if (!r.varint(value)) return false;
    has = true;
    return true;
}

// Policy.Action, Policy.Match, SocketProtocol, SocketFamily, HttpProtocol, Message.Type.
constexpr std::uint32_t action_max = 6, match_max = 5, protocol_max = 7, family_max = 2,
                        http_max = 3, type_max = 14;

bool parse_policy(Span bytes, RawPolicy& p, int depth) noexcept {
    WireReader r(bytes.p, bytes.n);
    while (!r.done()) {
        std::uint32_t t;
        if (!r.tag(t)) return false;
        bool ok;
        switch (t) {
        case tag_of(1, 2): ok = r.length(p.type); break;
        case tag_of(2, 2): ok = r.length(p.rule); break;
        case tag_of(3, 0): ok = read_enum(r, action_max, p.action, p.has_action); break;
        case tag_of(4, 0): ok = read_enum(r, match_max, p.match, p.has_match); break;
        case tag_of(5, 2): ok = r.length(p.value); break;
        default: ok = unknown(r, t, depth); break;
        }
        if (!ok) return false;
    }
    return true;
}

bool parse_message(Span bytes, RawMessage& m, int depth) noexcept {
    WireReader r(bytes.p, bytes.n);
    while (!r.done()) {
        std::uint32_t t;
        if (!r.tag(t)) return false;
        bool ok;
        switch (t) {
        case tag_of(1, 0): ok = read_enum(r, type_max, m.type, m.has_type); break;
        case tag_of(2, 0): ok = read_enum(r, family_max, m.family, m.has_family); break;
        case tag_of(3, 0): ok = read_enum(r, protocol_max, m.protocol, m.has_protocol); break;
        case tag_of(4, 2): ok = r.length(m.query_address); break;
        case tag_of(5, 2): ok = r.length(m.response_address); break;
        case tag_of(6, 0): ok = read_u32(r, m.query_port, m.has_query_port); break;
        case tag_of(7, 0): ok = read_u32(r, m.response_port, m.has_response_port); break;
        case tag_of(8, 0): ok = read_u64(r, m.query_time_sec, m.has_query_time_sec); break;
        case tag_of(9, 5): ok = r.fixed32(m.query_time_nsec); break;
        case tag_of(10, 2): ok = r.length(m.query_message); break;
        case tag_of(11, 2): ok = r.length(m.query_zone); break;
        case tag_of(12, 0): ok = read_u64(r, m.response_time_sec, m.has_response_time_sec); break;
        case tag_of(13, 5): ok = r.fixed32(m.response_time_nsec); break;
        case tag_of(14, 2): ok = r.length(m.response_message); break;
        case tag_of(15, 2): {
            // Embedded message: a second occurrence merges into the first.
            Span s;
            ok = r.length(s) && depth > 0 && parse_policy(s, m.policy, depth - 1);
            m.has_policy = true;
            break;
        }
        case tag_of(16, 0): ok = read_enum(r, http_max, m.http_protocol, m.has_http_protocol); break;
        default: ok = unknown(r, t, depth); break;
        }
        if (!ok) return false;
    }
    return true;
}

bool parse_dnstap(Span bytes, RawDnstap& d) noexcept {
    WireReader r(bytes.p, bytes.n);
    const int depth = wire::max_depth;
    while (!r.done()) {
        std::uint32_t t;
        if (!r.tag(t)) return false;
        bool ok;
        switch (t) {
        case tag_of(1, 2): ok = r.length(d.identity); break;
        case tag_of(2, 2): ok = r.length(d.version); break;
        case tag_of(3, 2): ok = r.length(d.extra); break;
        case tag_of(14, 2): {
            Span s;
            ok = r.length(s) && depth > 0 && parse_message(s, d.message, depth - 1);
            d.has_message = true;
            break;
        }
        case tag_of(15, 0): {
            std::uint32_t type = 0;  // Dnstap.Type: MESSAGE (1) only
            ok = read_enum(r, 1, type, d.has_type);
            break;
        }
        default: ok = unknown(r, t, depth); break;
        }
        if (!ok) return false;
    }
    return true;
}

std::string_view action_name(std::uint32_t a) noexcept {
    static constexpr std::string_view names[] = {
        "", "NXDOMAIN", "NODATA", "PASS", "DROP", "TRUNCATE", "LOCAL_DATA",
    };
    return a < std::size(names) ? names[a] : std::string_view{};
}

std::string_view match_name(std::uint32_t m) noexcept {
    static constexpr std::string_view names[] = {
        "", "QNAME", "CLIENT_IP", "RESPONSE_IP", "NS_NAME", "NS_IP",
    };
    return m < std::size(names) ? names[m] : std::string_view{};
}

// Free-form bytes (identity, version, extra, policy type) go to text columns: escaped to
// plain ASCII; the common all-printable case is a plain copy.
void set_text(std::string& out, std::string_view in) {
    out.clear();
    dns_detail::append_escaped_ascii(out, in);
}

// set_text for identity, version and extra, which the storage decoded into last time most
// likely holds already: escaping lengthens whatever it touches and its output is printable, so
// bytes equal to that output with no backslash need no escaping and are there already.
void set_same_text(std::string& out, std::string_view in) {
    if (out.size() == in.size() && std::memcmp(out.data(), in.data(), in.size()) == 0 &&
        std::memchr(out.data(), '\\', out.size()) == nullptr)
        return;
    set_text(out, in);
}

// Returns false when the length is neither 4 nor 16 (the address stays empty).
bool set_address(IpAddress& out, Span in) {
    if (in.n != 4 && in.n != 16) return false;
    std::memcpy(out.bytes.data(), in.p, in.n);
    out.length = static_cast<std::uint8_t>(in.n);
    return true;
}

// Seconds + nanoseconds since the epoch as nanoseconds, or -1 ("absent") when the pair is not
// a time: seconds past what int64 nanoseconds can hold (year 2262), or nsec >= 1e9. dnstap
// defines nsec as the fraction of the second, so a larger value is a broken sender; carrying
// it into the seconds would invent a time nobody sent (and could overflow near the limit), so
// it is treated like any other unrepresentable time. With both bounds checked the arithmetic
// cannot overflow: max_sec * 1e9 + 999'999'999 < INT64_MAX.
std::int64_t to_ns(std::uint64_t sec, std::uint32_t nsec) {
    constexpr std::uint64_t ns_per_sec = 1'000'000'000ULL;
    constexpr std::uint64_t max_sec = static_cast<std::uint64_t>(INT64_MAX) / ns_per_sec - 1;
    if (sec > max_sec || nsec >= ns_per_sec) return -1;
    return static_cast<std::int64_t>(sec * ns_per_sec + nsec);
}

std::string hex(Span bytes) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s;
    s.reserve(bytes.n * 2);
    for (std::size_t i = 0; i < bytes.n; ++i) {
        const std::uint8_t b = bytes.p[i];
        s.push_back(digits[b >> 4]);
        s.push_back(digits[b & 0xF]);
    }
    return s;
}

void decode_policy(const RawPolicy& in, Policy& out) {
    out.present = true;
    if (in.type.present()) set_text(out.type, view(in.type));
    if (in.rule.present()) {
        // RPZ rules are owner names of the policy zone; anything else is kept escaped.
        if (!name_to_text(bytes_of(in.rule), out.rule, true)) set_text(out.rule, view(in.rule));
    }
    if (in.has_action) out.action = action_name(in.action);
    if (in.has_match) out.match = match_name(in.match);
    if (in.value.present()) {
        const std::uint32_t match = in.has_match ? in.match : 0;
        const bool ip_match = match == 2 || match == 3 || match == 5;  // CLIENT_IP, RESPONSE_IP, NS_IP
        const bool name_match = match == 1 || match == 4;              // QNAME, NS_NAME
        IpAddress ip;
        if (ip_match && set_address(ip, in.value)) {
            out.value = ip.to_string();
        } else if (!(name_match && name_to_text(bytes_of(in.value), out.value, true))) {
            out.value = hex(in.value);
        }
    }
}

// DnsMessages a decoded message no longer needs (a query part where the next frame has none)
// wait here for the next one that does, with the capacity of their strings and answers.
constexpr std::size_t max_spare_dns = 64;

std::vector<std::unique_ptr<DnsMessage>>& spare_dns() {
    thread_local std::vector<std::unique_ptr<DnsMessage>> spares = [] {
        std::vector<std::unique_ptr<DnsMessage>> v;
        v.reserve(max_spare_dns);
        return v;
    }();
    return spares;
}

void park(HeapOptional<DnsMessage>& dns) noexcept {
    if (!dns) return;
    auto& spares = spare_dns();
    if (spares.size() < max_spare_dns) spares.push_back(dns.release());  // reserved: no allocation
    dns.reset();
}

DnsMessage& engage(HeapOptional<DnsMessage>& dns) {
    if (dns) return *dns;
    auto& spares = spare_dns();
    if (spares.empty()) return dns.emplace();
    DnsMessage& m = dns.adopt(std::move(spares.back()));
    spares.pop_back();
    return m;
}

void clear(Policy& p) noexcept {
    p.type.clear();
    p.rule.clear();
    p.action.clear();
    p.match.clear();
    p.value.clear();
    p.present = false;
}

// Clears every field but query and response: decode_dnstap decides about those at the end,
// reusing an engaged DnsMessage (parse_dns resets it) or parking it.
void reset(DnstapMessage& m) {
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

}  // namespace

bool is_query(MessageType t) noexcept {
    return (static_cast<unsigned>(t) & 1u) != 0;
}

bool pairs_on_query_side(MessageType t) noexcept {
    switch (t) {
    case MessageType::resolver_query:
    case MessageType::resolver_response:
    case MessageType::forwarder_query:
    case MessageType::forwarder_response: return false;
    default: return true;
    }
}

std::string_view kind_of(MessageType t) noexcept {
    switch (t) {
    case MessageType::auth_query:
    case MessageType::auth_response: return "auth";
    case MessageType::resolver_query:
    case MessageType::resolver_response: return "resolver";
    case MessageType::client_query:
    case MessageType::client_response: return "client";
    case MessageType::forwarder_query:
    case MessageType::forwarder_response: return "forwarder";
    case MessageType::stub_query:
    case MessageType::stub_response: return "stub";
    case MessageType::tool_query:
    case MessageType::tool_response: return "tool";
    case MessageType::update_query:
    case MessageType::update_response: return "update";
    case MessageType::unknown: break;
    }
    return "unknown";
}

std::string_view short_name(MessageType t) noexcept {
    static constexpr std::string_view names[] = {
        "??", "AQ", "AR", "RQ", "RR", "CQ", "CR", "FQ", "FR", "SQ", "SR", "TQ", "TR", "UQ", "UR",
    };
    const auto i = static_cast<std::size_t>(t);
    return i < std::size(names) ? names[i] : names[0];
}

std::string_view to_string(MessageType t) noexcept {
    static constexpr std::string_view names[] = {
        "UNKNOWN",         "AUTH_QUERY",         "AUTH_RESPONSE",   "RESOLVER_QUERY",
        "RESOLVER_RESPONSE", "CLIENT_QUERY",     "CLIENT_RESPONSE", "FORWARDER_QUERY",
        "FORWARDER_RESPONSE", "STUB_QUERY",      "STUB_RESPONSE",   "TOOL_QUERY",
        "TOOL_RESPONSE",   "UPDATE_QUERY",       "UPDATE_RESPONSE",
    };
    const auto i = static_cast<std::size_t>(t);
    return i < std::size(names) ? names[i] : names[0];
}

std::string_view to_string(SocketProtocol p) noexcept {
    static constexpr std::string_view names[] = {
        "unknown", "udp", "tcp", "dot", "doh", "dnscrypt-udp", "dnscrypt-tcp", "doq",
    };
    const auto i = static_cast<std::size_t>(p);
    return i < std::size(names) ? names[i] : names[0];
}

std::string IpAddress::to_string() const {
    char buf[INET6_ADDRSTRLEN];
    const int af = length == 4 ? AF_INET : length == 16 ? AF_INET6 : 0;
    if (af == 0 || inet_ntop(af, bytes.data(), buf, sizeof buf) == nullptr) return {};
    return buf;
}

const DnsMessage* DnstapMessage::primary() const noexcept {
    if (!is_query(type) && response) return &*response;
    if (query) return &*query;
    return response ? &*response : nullptr;
}

std::int64_t DnstapMessage::event_time_ns() const noexcept {
    if (!is_query(type) && response_time_ns >= 0) return response_time_ns;
    return query_time_ns >= 0 ? query_time_ns : response_time_ns;
}

DecodeStatus decode_dnstap(std::span<const std::uint8_t> frame, DnstapMessage& out) {
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

    RawDnstap d;
    // Missing required fields (Dnstap.type, Message.type) fail like a malformed frame, as
    // ParseFromArray does.
    if (!parse_dnstap({frame.data(), frame.size()}, d) || !d.has_type ||
        (d.has_message && !d.message.has_type))
        return fail(DecodeStatus::bad_protobuf);
    if (!d.has_message) return fail(DecodeStatus::not_message);

    if (d.identity.present()) set_same_text(out.identity, view(d.identity)); else out.identity.clear();
    if (d.version.present()) set_same_text(out.version, view(d.version)); else out.version.clear();
    if (d.extra.present()) set_same_text(out.extra, view(d.extra)); else out.extra.clear();

    const RawMessage& m = d.message;
    out.type = static_cast<MessageType>(m.type);  // required, and a closed enum: 1..14
    if (m.has_family) out.family = static_cast<SocketFamily>(m.family);
    if (m.has_protocol) out.protocol = static_cast<SocketProtocol>(m.protocol);
    if (m.query_address.present() && !set_address(out.query_address, m.query_address))
        out.bad_address_length = true;
    if (m.response_address.present() && !set_address(out.response_address, m.response_address))
        out.bad_address_length = true;
    out.has_query_port = m.has_query_port;
    out.query_port = m.query_port;
    out.has_response_port = m.has_response_port;
    out.response_port = m.response_port;
    if (m.has_query_time_sec) out.query_time_ns = to_ns(m.query_time_sec, m.query_time_nsec);
    if (m.has_response_time_sec)
        out.response_time_ns = to_ns(m.response_time_sec, m.response_time_nsec);
    if (m.query_zone.present() && !name_to_text(bytes_of(m.query_zone), out.query_zone, true))
        set_text(out.query_zone, view(m.query_zone));
    if (m.has_policy) decode_policy(m.policy, out.policy);
    if (m.has_http_protocol) out.http_protocol = static_cast<std::uint8_t>(m.http_protocol);

    bool dns_ok = true;
    if (m.query_message.present())
        dns_ok &= parse_dns(bytes_of(m.query_message), engage(out.query));
    else
        park(out.query);
    if (m.response_message.present())
        dns_ok &= parse_dns(bytes_of(m.response_message), engage(out.response));
    else
        park(out.response);
    return dns_ok ? DecodeStatus::ok : DecodeStatus::dns_error;
}

}  // namespace dnstap_collector
