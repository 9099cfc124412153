// read_name and skip_name against a plain reimplementation of their rules, one octet at a time
// (what read_name was before its table-driven loop): same text in both escape styles, with and
// without lowercasing, and the same result fields, on random runs of labels, pointers, root
// labels and junk.
#include <catch2/catch.hpp>

#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dns/dns_internal.hpp"
#include "dns_compare.hpp"

namespace dns_detail = dnstap_collector::dns_detail;

namespace {

using Bytes = std::vector<std::uint8_t>;

// read_name as it was before its table-driven loop, one octet at a time, with the libknot
// style added by its definition: the reference for the faster one.
dns_detail::NameResult reference_read_name(const std::uint8_t* msg, std::size_t len, std::size_t pos,
                                           std::string& out, bool lowercase, dns_detail::NameStyle style) {
    using dns_detail::NameError;
    dns_detail::NameResult result;
    std::size_t wire_len = 0;
    bool jumped = false, first = true;
    std::size_t run_start = pos;
    auto finish = [&](NameError e) {
        result.error = e;
        if (!jumped && e != NameError::none) result.next = pos;
        return result;
    };
    auto put = [&](std::uint8_t ch) {
        const bool letter_or_digit = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
        const bool printable = ch > 0x20 && ch < 0x7F;
        bool backslash = false, ddd = false;
        if (style == dns_detail::NameStyle::presentation) {
            backslash = printable && std::string_view(".\\\"();@$").find(static_cast<char>(ch)) != std::string_view::npos;
            ddd = !printable;
        } else {
            const bool plain = letter_or_digit || ch == '-' || ch == '_' || ch == '*' || ch == '/';
            backslash = !plain && printable && ch != '#';
            ddd = !plain && !backslash;
        }
        if (ddd) {
            out += '\\';
            out += static_cast<char>('0' + ch / 100);
            out += static_cast<char>('0' + (ch / 10) % 10);
            out += static_cast<char>('0' + ch % 10);
            return;
        }
        if (backslash) out += '\\';
        if (lowercase && ch >= 'A' && ch <= 'Z') ch = static_cast<std::uint8_t>(ch + 32);
        out += static_cast<char>(ch);
    };
    for (;;) {
        if (pos >= len) return finish(NameError::truncated);
        const std::uint8_t l = msg[pos];
        if (l == 0) {
            if (first) out += '.';
            if (!jumped) result.next = pos + 1;
            result.length = wire_len + 1;
            return finish(NameError::none);
        }
        if ((l & 0xC0) == 0xC0) {
            if (pos + 1 >= len) return finish(NameError::truncated);
            const std::size_t target = (static_cast<std::size_t>(l & 0x3F) << 8) | msg[pos + 1];
            if (target >= run_start) return finish(NameError::bad_compression);
            run_start = target;
            if (!jumped) result.next = pos + 2;
            jumped = true;
            result.compressed = true;
            pos = target;
            continue;
        }
        if ((l & 0xC0) != 0) return finish(NameError::bad_label);
        wire_len += 1 + l;
        if (wire_len + 1 > 255) return finish(NameError::name_too_long);
        if (pos + 1 + l > len) return finish(NameError::truncated);
        if (!first) out += '.';
        first = false;
        for (std::size_t i = 0; i < l; ++i) put(msg[pos + 1 + i]);
        pos += 1 + l;
    }
}

}  // namespace

TEST_CASE("read_name and skip_name equal a byte-at-a-time reference", "[dns]") {
    std::mt19937 rng(99);
    for (int i = 0; i < 30000; ++i) {
        // Labels of all lengths and octets, with pointers, root labels and junk in between.
        Bytes m;
        const std::size_t size = 1 + rng() % 400;
        while (m.size() < size) {
            switch (rng() % 8) {
            case 0: m.push_back(0); break;
            case 1: m.push_back(static_cast<std::uint8_t>(0xC0 | (rng() % 2))); m.push_back(static_cast<std::uint8_t>(rng())); break;
            case 2: m.push_back(static_cast<std::uint8_t>(rng())); break;
            default: {
                const unsigned len = (rng() % 4 == 0) ? rng() % 64 : rng() % 20;
                m.push_back(static_cast<std::uint8_t>(len));
                for (unsigned k = 0; k < len; ++k) {
                    const unsigned kind = rng() % 4;
                    m.push_back(static_cast<std::uint8_t>(kind == 0 ? rng() : kind == 1 ? 'A' + rng() % 26 : 'a' + rng() % 26));
                }
            }
            }
        }
        const std::size_t len = m.size() - rng() % 3 % m.size();
        const std::size_t pos = rng() % len;
        for (const auto style : {dns_detail::NameStyle::presentation, dns_detail::NameStyle::libknot}) {
            for (const bool lowercase : {false, true}) {
                std::string got = "prefix", expected = "prefix";
                const auto r = dns_detail::read_name(m.data(), len, pos, got, lowercase, true, style);
                const auto e = reference_read_name(m.data(), len, pos, expected, lowercase, style);
                INFO("message: " << dns_compare::hex({m.data(), len}) << " at " << pos);
                REQUIRE(got == expected);
                REQUIRE(r.error == e.error);
                REQUIRE(r.next == e.next);
                REQUIRE(r.compressed == e.compressed);
                REQUIRE(r.length == e.length);
            }
        }
        const auto s = dns_detail::skip_name(m.data(), len, pos);
        std::string ignored;
        const auto e = reference_read_name(m.data(), len, pos, ignored, false, dns_detail::NameStyle::presentation);
        REQUIRE(s.error == e.error);
        REQUIRE(s.next == e.next);
        REQUIRE(s.length == e.length);
    }
}
