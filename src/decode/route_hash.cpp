// Pairing-key hash straight from the protobuf wire, so ingest can route frames to workers
// without a full decode. Hand-written scan (no generated code): every read is bounds-checked
// and anything that is not well-formed protobuf gives 0.

#include <cstring>

#include "dnstap_collector/decode.hpp"

namespace dnstap_collector {

namespace {

struct Span {
    const std::uint8_t* p = nullptr;
    std::size_t n = 0;
    bool present() const noexcept { return p != nullptr; }
};

class WireReader {
public:
    WireReader(const std::uint8_t* p, std::size_t n) noexcept : p_(p), end_(p + n) {}
    bool done() const noexcept { return p_ == end_; }

    bool varint(std::uint64_t& v) noexcept {
        v = 0;
        for (unsigned shift = 0; shift < 64; shift += 7) {
            if (p_ == end_) return false;
            const std::uint8_t b = *p_++;
            v |= static_cast<std::uint64_t>(b & 0x7F) << shift;
            if (!(b & 0x80)) return true;
        }
        return false;  // more than 10 bytes
    }

    // One field: its number, wire type and (for length-delimited) its payload. Fixed-size and
    // varint values are skipped or returned in `value`. Groups are treated as garbage.
    bool field(std::uint32_t& number, std::uint64_t& value, Span& bytes) noexcept {
        std::uint64_t key;
        if (!varint(key)) return false;
        number = static_cast<std::uint32_t>(key >> 3);
        if (number == 0 || (key >> 3) > 0x1FFFFFFF) return false;
        switch (key & 7) {
        case 0: return varint(value);
        case 1: return skip(8);
        case 2: {
            std::uint64_t len;
            if (!varint(len) || len > static_cast<std::uint64_t>(end_ - p_)) return false;
            bytes = {p_, static_cast<std::size_t>(len)};
            p_ += len;
            return true;
        }
        case 5: return skip(4);
        default: return false;
        }
    }

private:
    bool skip(std::size_t n) noexcept {
        if (static_cast<std::size_t>(end_ - p_) < n) return false;
        p_ += n;
        return true;
    }
    const std::uint8_t* p_;
    const std::uint8_t* end_;
};

// Word-at-a-time multiply-xorshift mixing, then a splitmix64 finaliser so the low bits (used
// modulo the worker count) are well spread. Not cryptographic: it only routes frames.
class Hasher {
public:
    void add_u64(std::uint64_t v) noexcept {
        h_ = (h_ ^ v) * 0x9e3779b97f4a7c15ULL;
        h_ ^= h_ >> 29;
    }
    void add_bytes(const Span& s) noexcept {
        add_u64(s.present() ? s.n : ~std::uint64_t{0});  // length first: fields cannot run together
        std::size_t i = 0;
        for (; i + 8 <= s.n; i += 8) {
            std::uint64_t w;
            std::memcpy(&w, s.p + i, 8);
            add_u64(w);
        }
        if (i < s.n) {
            std::uint64_t w = 0;
            std::memcpy(&w, s.p + i, s.n - i);
            add_u64(w);
        }
    }
    std::uint64_t finish() const noexcept {
        std::uint64_t z = h_ + 0x9e3779b97f4a7c15ULL;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }

private:
    std::uint64_t h_ = 0xcbf29ce484222325ULL;
};

}  // namespace

std::uint64_t route_hash(std::span<const std::uint8_t> frame) noexcept {
    Span identity, message;
    {
        WireReader r(frame.data(), frame.size());
        while (!r.done()) {
            std::uint32_t number = 0;
            std::uint64_t value = 0;
            Span bytes;
            if (!r.field(number, value, bytes)) return 0;
            if (number == 1 && bytes.present()) identity = bytes;   // last one wins, as in protobuf
            if (number == 14 && bytes.present()) message = bytes;
        }
    }
    if (!message.present()) return 0;

    Span query_address, response_address, query_message, response_message;
    std::uint64_t type = 0, protocol = 0, query_port = 0, response_port = 0;
    WireReader r(message.p, message.n);
    while (!r.done()) {
        std::uint32_t number = 0;
        std::uint64_t value = 0;
        Span bytes;
        if (!r.field(number, value, bytes)) return 0;
        switch (number) {
        case 1: type = value; break;
        case 3: protocol = value; break;
        case 4: query_address = bytes; break;
        case 5: response_address = bytes; break;
        case 6: query_port = value; break;
        case 7: response_port = value; break;
        case 10: query_message = bytes; break;
        case 14: response_message = bytes; break;
        default: break;
        }
    }
    // Queries carry query_message, responses response_message: same DNS id in both.
    std::uint64_t dns_id = ~std::uint64_t{0};
    const Span& dns = query_message.n >= 2 ? query_message : response_message;
    if (dns.n >= 2) dns_id = (std::uint64_t{dns.p[0]} << 8) | dns.p[1];

    Hasher h;
    h.add_bytes(identity);
    h.add_u64(protocol);
    if (pairs_on_query_side(static_cast<MessageType>(type <= 14 ? type : 0))) {
        h.add_bytes(query_address);
        h.add_u64(query_port);
    }
    h.add_bytes(response_address);
    h.add_u64(response_port);
    h.add_u64(dns_id);
    return h.finish();
}

}  // namespace dnstap_collector
