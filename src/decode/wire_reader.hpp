// Bounds-checked reading of the protobuf wire format, shared by route_hash (a cheap scan of
// the pairing-key fields) and decode_dnstap (the full parse of a dnstap frame). No generated
// code: every read is checked against the end of the buffer and fails instead of running past.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace dnstap_collector::wire {

// Bytes of a length-delimited field inside the frame; p == nullptr when absent.
struct Span {
    const std::uint8_t* p = nullptr;
    std::size_t n = 0;
    bool present() const noexcept { return p != nullptr; }
};

// Nesting limit of libprotobuf's parser (CodedInputStream::GetDefaultRecursionLimit()):
// every embedded message and every group takes one level; the 101st fails.
inline constexpr int max_depth = 100;

class WireReader {
public:
    WireReader(const std::uint8_t* p, std::size_t n) noexcept : p_(p), end_(p + n) {}
    bool done() const noexcept { return p_ == end_; }

    // Base-128 varint of at most 10 bytes; bits past the 64th are dropped (as libprotobuf).
    bool varint(std::uint64_t& v) noexcept { return read_varint<10>(v); }
    // route_hash's scan: one field, its number, wire type and (for length-delimited) its
    // payload. Fixed-size and varint values are skipped or returned in `value`. Groups are
    // treated as garbage (route_hash gives 0 for them).
    [[gnu::always_inline]] bool field(std::uint32_t& number, std::uint64_t& value, Span& bytes) noexcept {
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

    // ---- exactly libprotobuf's rules (3.21, ParseContext), for decode_dnstap ----------------

    // A tag: a varint of at most 5 bytes, kept modulo 2^32 (ReadTag).
    bool tag(std::uint32_t& t) noexcept {
        std::uint64_t v;
        if (!read_varint<5>(v)) return false;
        t = static_cast<std::uint32_t>(v);
        return true;
    }
    // The length of a length-delimited field: a varint of at most 5 bytes (ReadSize), which
    // must fit in what is left.
    bool length(Span& bytes) noexcept {
        std::uint64_t v;
        if (!read_varint<5>(v) || v > static_cast<std::uint64_t>(end_ - p_)) return false;
        bytes = {p_, static_cast<std::size_t>(v)};
        p_ += v;
        return true;
    }
    bool fixed32(std::uint32_t& v) noexcept {
        if (end_ - p_ < 4) return false;
        v = std::uint32_t{p_[0]} | (std::uint32_t{p_[1]} << 8) | (std::uint32_t{p_[2]} << 16) |
            (std::uint32_t{p_[3]} << 24);
        p_ += 4;
        return true;
    }

    // Skips the value of a field this parser does not know (or knows with another wire type),
    // as libprotobuf keeps it among the unknown fields: any wire type but end-group, 6 and 7;
    // a group must end with the end-group tag of its own number. `depth` as in max_depth.
    // The caller has already failed tag 0 and end-group tags.
    bool skip_field(std::uint32_t t, int depth) noexcept {
        if ((t >> 3) == 0) return false;
        switch (t & 7) {
        case 0: {
            std::uint64_t v;
            return varint(v);
        }
        case 1: return skip(8);
        case 2: {
            Span s;
            return length(s);
        }
        case 3: {
            if (--depth < 0) return false;
            while (!done()) {
                std::uint32_t inner;
                if (!tag(inner)) return false;
                if (inner == 0 || (inner & 7) == 4) return inner == t + 1;
                if (!skip_field(inner, depth)) return false;
            }
            return false;  // no end-group tag
        }
        case 5: return skip(4);
        default: return false;
        }
    }

private:
    // A varint of at most MaxBytes bytes, bits past the 64th dropped. Keys, enums and most
    // lengths are one byte: that case returns at once; a longer one with MaxBytes left in the
    // buffer needs no end check per byte. Every frame goes through here twice (route_hash at
    // ingest, decode_dnstap in a worker), some 25 varints each.
    template <unsigned MaxBytes>
    bool read_varint(std::uint64_t& v) noexcept {
        if (p_ == end_) return false;
        if (*p_ < 0x80) {
            v = *p_++;
            return true;
        }
        const bool room = static_cast<std::size_t>(end_ - p_) >= MaxBytes;
        std::uint64_t r = 0;
        const std::uint8_t* p = p_;
        for (unsigned i = 0; i < MaxBytes; ++i) {
            if (!room && p == end_) return false;
            const std::uint8_t b = *p++;
            r |= static_cast<std::uint64_t>(b & 0x7F) << (7 * i);
            if (!(b & 0x80)) {
                p_ = p;
                v = r;
                return true;
            }
        }
        return false;  // longer than MaxBytes
    }
    bool skip(std::size_t n) noexcept {
        if (static_cast<std::size_t>(end_ - p_) < n) return false;
        p_ += n;
        return true;
    }
    const std::uint8_t* p_;
    const std::uint8_t* end_;
};

}  // namespace dnstap_collector::wire
