// dnstap protobuf -> DnstapMessage (read straight from the frame's bytes, with libprotobuf's
// semantics for proto/dnstap.proto; the generated code is the reference of the differential
// tests), with both DNS payloads parsed by dns.hpp. Two tiers of failure: a frame that is not
// a dnstap Message is dropped and counted; a bad DNS payload inside a good frame is kept with
// its error.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "dnstap_collector/dns.hpp"

namespace dnstap_collector {

// Values are those of dnstap.proto.
enum class MessageType : std::uint8_t {
    unknown = 0,
    auth_query = 1, auth_response, resolver_query, resolver_response, client_query,
    client_response, forwarder_query, forwarder_response, stub_query, stub_response,
    tool_query, tool_response, update_query, update_response,
};
enum class SocketFamily : std::uint8_t { unknown = 0, inet = 1, inet6 = 2 };
enum class SocketProtocol : std::uint8_t {
    unknown = 0, udp = 1, tcp, dot, doh, dnscrypt_udp, dnscrypt_tcp, doq,
};

bool is_query(MessageType t) noexcept;                  // odd values: *_QUERY
// Whether the initiator's address and port identify an exchange of this type. Not for
// resolver and forwarder messages: the initiator is the server itself, and senders report its
// side inconsistently (BIND: 0.0.0.0; Unbound: another query's port in some FR messages).
bool pairs_on_query_side(MessageType t) noexcept;
std::string_view kind_of(MessageType t) noexcept;        // "client", "resolver", "auth", ...
std::string_view short_name(MessageType t) noexcept;     // "CQ", "CR", "AQ", ... as dnstap-read
std::string_view to_string(MessageType t) noexcept;      // "CLIENT_QUERY", ...
std::string_view to_string(SocketProtocol p) noexcept;   // "udp", "tcp", "dot", "doh", "doq", ...

struct IpAddress {
    std::array<std::uint8_t, 16> bytes{};
    std::uint8_t length = 0;  // 0 (absent), 4 or 16
    bool empty() const noexcept { return length == 0; }
    std::string to_string() const;  // "192.0.2.1", "2001:db8::1", "" when empty
    friend bool operator==(const IpAddress&, const IpAddress&) = default;
};

struct Policy {
    std::string type, rule, action, match, value;  // presentation; empty when absent
    bool present = false;
};

// std::optional's interface with the value on the heap, so that moving it, or parking its
// storage for the next message that needs one, moves a pointer (a DnsMessage is large and
// a recycled DnstapMessage switches between query and response payloads every frame).
// Copies are deep.
template <class T>
class HeapOptional {
public:
    HeapOptional() noexcept = default;
    HeapOptional(std::nullopt_t) noexcept {}
    HeapOptional(const T& v) : p_(std::make_unique<T>(v)) {}
    HeapOptional(T&& v) : p_(std::make_unique<T>(std::move(v))) {}
    HeapOptional(const HeapOptional& o) : p_(o.p_ ? std::make_unique<T>(*o.p_) : nullptr) {}
    HeapOptional(HeapOptional&&) noexcept = default;
    ~HeapOptional() = default;
    HeapOptional& operator=(const HeapOptional& o) {
        if (this != &o) {
            if (o.p_) assign(*o.p_);
            else reset();
        }
        return *this;
    }
    HeapOptional& operator=(HeapOptional&&) noexcept = default;
    HeapOptional& operator=(std::nullopt_t) noexcept { reset(); return *this; }
    HeapOptional& operator=(const T& v) { assign(v); return *this; }
    HeapOptional& operator=(T&& v) { assign(std::move(v)); return *this; }

    bool has_value() const noexcept { return p_ != nullptr; }
    explicit operator bool() const noexcept { return has_value(); }
    T& operator*() noexcept { return *p_; }
    const T& operator*() const noexcept { return *p_; }
    T* operator->() noexcept { return p_.get(); }
    const T* operator->() const noexcept { return p_.get(); }
    T& value() { return has_value() ? *p_ : throw std::bad_optional_access(); }
    const T& value() const { return has_value() ? *p_ : throw std::bad_optional_access(); }
    void reset() noexcept { p_.reset(); }
    T& emplace() { p_ = std::make_unique<T>(); return *p_; }

    // Storage hand-over without touching the value.
    std::unique_ptr<T> release() noexcept { return std::move(p_); }
    T& adopt(std::unique_ptr<T> storage) noexcept { p_ = std::move(storage); return *p_; }

private:
    template <class U>
    void assign(U&& v) {
        if (p_) *p_ = std::forward<U>(v);
        else p_ = std::make_unique<T>(std::forward<U>(v));
    }
    std::unique_ptr<T> p_;
};

struct DnstapMessage {
    std::string identity;
    std::string version;
    std::string extra;
    MessageType type = MessageType::unknown;
    SocketFamily family = SocketFamily::unknown;
    SocketProtocol protocol = SocketProtocol::unknown;
    IpAddress query_address, response_address;
    bool bad_address_length = false;     // an address was neither 4 nor 16 bytes: kept empty
    std::uint32_t query_port = 0, response_port = 0;
    bool has_query_port = false, has_response_port = false;
    std::int64_t query_time_ns = -1;     // unix epoch ns, -1 when absent
    std::int64_t response_time_ns = -1;
    std::string query_zone;              // presentation, empty when absent
    HeapOptional<DnsMessage> query;      // parsed query_message
    HeapOptional<DnsMessage> response;   // parsed response_message
    Policy policy;
    std::uint8_t http_protocol = 0;
    std::uint32_t frame_size = 0;

    // The DNS message that identifies this event (response for responses, else query).
    const DnsMessage* primary() const noexcept;
    std::int64_t event_time_ns() const noexcept;  // response time for responses, else query time
};

enum class DecodeStatus { ok, dns_error, bad_protobuf, not_message };

// Full decode. `ok` or `dns_error` (kept, with DnsMessage::error set) fill `out`.
DecodeStatus decode_dnstap(std::span<const std::uint8_t> frame, DnstapMessage& out);

// Cheap scan of the raw frame for the fields of the pairing key (addresses, ports, DNS id,
// protocol, identity) so ingest can route a frame to the worker that owns its pairing
// table without a full decode. Same hash for a query and its response.
std::uint64_t route_hash(std::span<const std::uint8_t> frame) noexcept;

// Appends s as a JSON string: quotes, backslashes and control characters escaped; bytes of
// 0x80 and above are copied (the caller passes valid UTF-8; our names are ASCII already).
void append_json_string(std::string& out, std::string_view s);
// The same into memory with room for 6 * s.size() + 2 bytes (every byte escaped), or for
// s.size() + 2 when json_plain(s); returns the end of what was written.
char* write_json_string(char* out, std::string_view s) noexcept;
// Whether s is its own JSON string content (no byte needs an escape).
bool json_plain(std::string_view s) noexcept;

// Text line like dnstap-read's default output, and a JSON object, for `read` and `tail`.
std::string format_text(const DnstapMessage& m);
std::string format_json(const DnstapMessage& m);

}  // namespace dnstap_collector
