// Pairing-key hash straight from the protobuf wire, so ingest can route frames to workers
// without a full decode. Hand-written scan (wire_reader.hpp): every read is bounds-checked
// and anything that is not well-formed protobuf gives 0.

#include <cstring>

#include "decode/wire_reader.hpp"
#include "dnstap_collector/decode.hpp"

namespace dnstap_collector {

namespace {

using wire::Span;
using wire::WireReader;

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
