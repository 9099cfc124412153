// Eight bytes at a time: whether any byte of a 64-bit word is in a class, for scans of names
// and text that nearly never find anything to escape. Each test is exact for "any byte" (the
// per-byte flags may be wrong above a true hit, so they are not used to locate it) and does
// not depend on byte order.
#pragma once

#include <cstdint>
#include <cstring>

namespace dnstap_collector::swar {

inline constexpr std::uint64_t ones = 0x0101010101010101ull;
inline constexpr std::uint64_t highs = 0x8080808080808080ull;

inline std::uint64_t load(const char* p) noexcept {
    std::uint64_t x;
    std::memcpy(&x, p, 8);
    return x;
}
inline void store(char* p, std::uint64_t x) noexcept { std::memcpy(p, &x, 8); }
inline std::uint64_t load4(const char* p) noexcept {
    std::uint32_t x;
    std::memcpy(&x, p, 4);
    return x;
}

// Nonzero when a byte is below n (n <= 128).
constexpr std::uint64_t below(std::uint64_t x, std::uint8_t n) noexcept { return (x - ones * n) & ~x & highs; }
// Nonzero when a byte equals c.
constexpr std::uint64_t equal(std::uint64_t x, std::uint8_t c) noexcept { return below(x ^ (ones * c), 1); }
// Nonzero when a byte is 0x80 or above.
constexpr std::uint64_t non_ascii(std::uint64_t x) noexcept { return x & highs; }
// Nonzero when a byte is not printable ASCII (0x20..0x7e).
constexpr std::uint64_t unprintable(std::uint64_t x) noexcept {
    return non_ascii(x) | below(x, 0x20) | equal(x, 0x7f);
}
// The flags (0x80 per byte) of the bytes 'A'..'Z', exact per byte: the sums are taken over
// the low seven bits, so no carry crosses a byte, and bytes of 0x80 and above are masked out.
constexpr std::uint64_t upper_flags(std::uint64_t x) noexcept {
    const std::uint64_t low7 = x & ~highs;
    return (low7 + ones * (0x80 - 'A')) & ~(low7 + ones * (0x80 - 'Z' - 1)) & ~x & highs;
}
// ASCII letters lowercased, every other byte unchanged.
constexpr std::uint64_t lower(std::uint64_t x) noexcept { return x | (upper_flags(x) >> 2); }

// The OR of test(word) over words made of the bytes of s only, which together hold every
// byte of s (some twice): nonzero when a byte of s is in test's class.
template <class Test>
std::uint64_t scan(const char* d, std::size_t n, Test test) noexcept {
    if (n >= 8) {
        std::uint64_t hits = 0;
        for (std::size_t i = 0; i + 8 <= n; i += 8) hits |= test(load(d + i));
        if (n % 8) hits |= test(load(d + n - 8));  // the tail, overlapping
        return hits;
    }
    if (n >= 4) return test(load4(d) | load4(d + n - 4) << 32);
    if (n == 0) return 0;
    auto byte = [&](std::size_t i) -> std::uint64_t { return static_cast<unsigned char>(d[i]); };
    return test(byte(0) | byte(n / 2) << 8 | byte(n - 1) << 16 | byte(0) * 0x0101010101000000ull);
}

}  // namespace dnstap_collector::swar
