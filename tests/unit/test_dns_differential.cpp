// parse_dns reads common messages without knot_pkt_parse and leaves the rest to libknot; here
// both ways must give the same DnsMessage, error included, for the fuzz seeds (messages of a
// real named), for generated messages of the common types and some others, and for mutations
// of them: byte changes, truncations, other section counts, compression pointers anywhere,
// upper-case names, odd octets in names and strings.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "dns_compare.hpp"

using dns_compare::check_same_as_libknot;

namespace {

using Bytes = std::vector<std::uint8_t>;

std::vector<Bytes> seeds() {
    const auto dir = std::filesystem::path(__FILE__).parent_path().parent_path() / "fuzz" /
                     "corpus" / "fuzz_dns_parse";
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(dir))
        if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    std::vector<Bytes> messages;
    for (const auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        messages.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    return messages;
}

// Random DNS messages: mostly well-formed, with names compressed against earlier ones, and
// now and then a pointer or length that is not.
class Generator {
public:
    explicit Generator(std::uint32_t seed) : rng_(seed) {}

    std::uint32_t below(std::uint32_t n) { return static_cast<std::uint32_t>(rng_() % n); }
    bool chance(unsigned percent) { return below(100) < percent; }

    Bytes message() {
        b_.clear();
        suffixes_.clear();
        const unsigned counts[3] = {below(5), below(4), below(4)};
        const bool edns = chance(50);
        u16(below(65536)).u16(0x8000 | below(0x8000));
        u16(1).u16(counts[0]).u16(counts[1]).u16(counts[2] + (edns ? 1 : 0));
        name(/*compress=*/chance(3));
        u16(pick_type()).u16(1);
        for (int section = 0; section < 3; ++section) {
            for (unsigned i = 0; i < counts[section]; ++i) {
                if (section == 2 && edns && chance(5)) opt();  // OPT not last
                record();
            }
        }
        if (edns && b_.size() < 60000) opt();
        return b_;
    }

    // A few changes of the kinds that matter to the parsers.
    Bytes mutate(Bytes m) {
        const unsigned n = 1 + below(3);
        for (unsigned k = 0; k < n && !m.empty(); ++k) {
            switch (below(7)) {
            case 0:  // any byte, any value
                m[below(static_cast<std::uint32_t>(m.size()))] = static_cast<std::uint8_t>(rng_());
                break;
            case 1:  // cut short
                m.resize(below(static_cast<std::uint32_t>(m.size()) + 1));
                break;
            case 2:  // other section counts
                if (m.size() >= 12) m[5 + 2 * below(4)] = static_cast<std::uint8_t>(below(6));
                break;
            case 3: {  // a compression pointer anywhere
                if (m.size() < 2) break;
                const std::size_t at = below(static_cast<std::uint32_t>(m.size() - 1));
                const std::uint32_t target = below(static_cast<std::uint32_t>(m.size()) + 4);
                m[at] = static_cast<std::uint8_t>(0xC0 | (target >> 8));
                m[at + 1] = static_cast<std::uint8_t>(target);
                break;
            }
            case 4:  // a trailing byte
                m.push_back(static_cast<std::uint8_t>(rng_()));
                break;
            case 5: {  // a byte in the middle added or removed (shifts lengths)
                const std::size_t at = below(static_cast<std::uint32_t>(m.size()));
                if (chance(50)) m.erase(m.begin() + static_cast<std::ptrdiff_t>(at));
                else m.insert(m.begin() + static_cast<std::ptrdiff_t>(at), static_cast<std::uint8_t>(rng_()));
                break;
            }
            default: {  // an upper-case letter
                const std::size_t at = below(static_cast<std::uint32_t>(m.size()));
                m[at] = static_cast<std::uint8_t>('A' + below(26));
                break;
            }
            }
        }
        return m;
    }

private:
    Generator& u8(unsigned v) {
        b_.push_back(static_cast<std::uint8_t>(v));
        return *this;
    }
    Generator& u16(unsigned v) { return u8(v >> 8).u8(v & 0xFF); }
    Generator& u32(std::uint32_t v) { return u16(v >> 16).u16(v & 0xFFFF); }

    std::uint8_t label_octet() {
        switch (below(10)) {
        case 0: return static_cast<std::uint8_t>(rng_());  // anything, escapes included
        case 1: return static_cast<std::uint8_t>('A' + below(26));
        case 2: return static_cast<std::uint8_t>("-_*/.\\\"#()$;@! ~"[below(16)]);
        case 3: return static_cast<std::uint8_t>('0' + below(10));
        default: return static_cast<std::uint8_t>('a' + below(26));
        }
    }

    // A name; with `compress`, often ending in a pointer to a suffix written before.
    void name(bool compress = true) {
        const unsigned labels = below(5);
        std::vector<std::uint16_t> starts;
        for (unsigned i = 0; i < labels; ++i) {
            if (compress && !suffixes_.empty() && chance(30)) break;
            starts.push_back(static_cast<std::uint16_t>(b_.size()));
            const unsigned len = chance(2) ? 1 + below(63) : 1 + below(12);
            u8(len);
            for (unsigned k = 0; k < len; ++k) u8(label_octet());
        }
        if (compress && !suffixes_.empty() && chance(60)) {
            std::uint32_t target = suffixes_[below(static_cast<std::uint32_t>(suffixes_.size()))];
            if (chance(3)) target = below(static_cast<std::uint32_t>(b_.size()) + 8);  // maybe forward
            if (chance(3) && !starts.empty()) target = starts.front();  // into this very name
            u16(0xC000 | (target & 0x3FFF));
        } else {
            u8(0);
        }
        for (const auto s : starts)
            if (s < 0x4000) suffixes_.push_back(s);
    }

    void character_string(unsigned max) {
        const unsigned len = below(max + 1);
        u8(len);
        for (unsigned k = 0; k < len; ++k) {
            switch (below(6)) {
            case 0: u8(static_cast<unsigned>(rng_())); break;
            case 1: u8("\"\\ .;"[below(5)]); break;
            default: u8(0x20 + below(0x5F));
            }
        }
    }

    std::uint16_t pick_type() {
        static constexpr std::uint16_t common[] = {1, 28, 5, 2, 12, 39, 15, 33, 6, 16};
        static constexpr std::uint16_t other[] = {13, 46, 47, 48, 43, 257, 99, 65280, 250, 255, 0};
        if (chance(85)) return common[below(std::size(common))];
        return other[below(std::size(other))];
    }

    void record() {
        name();
        const std::uint16_t type = pick_type();
        u16(type).u16(chance(95) ? 1 : below(300)).u32(chance(90) ? below(100000) : static_cast<std::uint32_t>(rng_()));
        const std::size_t rdlength_at = b_.size();
        u16(0);
        const std::size_t start = b_.size();
        switch (type) {
        case 1: for (int i = 0; i < 4; ++i) u8(below(256)); break;
        case 28:
            for (int i = 0; i < 16; ++i) u8(chance(50) ? 0 : below(256));
            break;
        case 5: case 2: case 12: case 39: name(); break;
        case 15: u16(below(65536)); name(); break;
        case 33: u16(below(65536)).u16(below(65536)).u16(below(65536)); name(); break;
        case 6:
            name();
            name();
            for (int i = 0; i < 5; ++i) u32(static_cast<std::uint32_t>(rng_()));
            break;
        case 16: {
            const unsigned strings = 1 + below(3);
            for (unsigned i = 0; i < strings; ++i) character_string(chance(5) ? 255 : 20);
            break;
        }
        case 13: character_string(10); character_string(10); break;
        default: {
            const unsigned len = below(24);
            for (unsigned i = 0; i < len; ++i) u8(below(256));
        }
        }
        if (chance(4)) u8(below(256));  // rdata longer than its type's layout
        std::size_t rdlength = b_.size() - start;
        if (chance(3)) rdlength = rdlength + below(3) - 1;  // rdlength off by one
        if (chance(2)) rdlength = 0;
        b_[rdlength_at] = static_cast<std::uint8_t>(rdlength >> 8);
        b_[rdlength_at + 1] = static_cast<std::uint8_t>(rdlength);
    }

    void opt() {
        if (chance(95)) u8(0);
        else name();
        u16(41).u16(chance(95) ? 512 + below(4000) : below(3)).u8(below(4)).u8(below(2)).u16(chance(50) ? 0x8000 : 0);
        const std::size_t rdlength_at = b_.size();
        u16(0);
        const std::size_t start = b_.size();
        const unsigned options = below(4);
        for (unsigned i = 0; i < options; ++i) {
            switch (below(5)) {
            case 0:  // client subnet, IPv4
                u16(8).u16(7).u16(1).u8(24).u8(0).u8(198).u8(51).u8(100);
                break;
            case 1:  // client subnet, IPv6
                u16(8).u16(10).u16(2).u8(48).u8(0).u16(0x2001).u16(0xdb8).u16(1);
                break;
            case 2: {  // extended error
                const unsigned text = below(8);
                u16(15).u16(2 + text).u16(below(30));
                for (unsigned k = 0; k < text; ++k) u8(below(256));
                break;
            }
            case 3:  // cookie
                u16(10).u16(8).u32(0x01020304).u32(0x05060708);
                break;
            default: {  // anything, its length maybe wrong
                const unsigned len = below(6);
                u16(below(20)).u16(len + (chance(10) ? 1 : 0));
                for (unsigned k = 0; k < len; ++k) u8(below(256));
            }
            }
        }
        const std::size_t rdlength = b_.size() - start;
        b_[rdlength_at] = static_cast<std::uint8_t>(rdlength >> 8);
        b_[rdlength_at + 1] = static_cast<std::uint8_t>(rdlength);
    }

    std::mt19937 rng_;
    Bytes b_;
    std::vector<std::uint16_t> suffixes_;  // offsets where a complete name starts
};

}  // namespace

TEST_CASE("parse_dns equals libknot alone on the messages of a real named", "[dns]") {
    const auto messages = seeds();
    REQUIRE(messages.size() > 50);
    std::size_t direct = 0;
    for (const auto& m : messages) direct += check_same_as_libknot(m) ? 1 : 0;
    // Most of these are responses of an authoritative server and a resolver.
    CHECK(direct > messages.size() / 3);

    Generator g(7);
    for (const auto& m : messages)
        for (int i = 0; i < 200; ++i) check_same_as_libknot(g.mutate(m));
    // Every truncation.
    for (const auto& m : messages)
        for (std::size_t n = 0; n < m.size(); ++n) check_same_as_libknot({m.data(), n});
}

TEST_CASE("parse_dns equals libknot alone on generated and mutated messages", "[dns]") {
    Generator g(20240611);
    std::size_t direct = 0, total = 0, mutated_direct = 0;
    for (int i = 0; i < 40000; ++i) {
        const Bytes m = g.message();
        direct += check_same_as_libknot(m) ? 1 : 0;
        ++total;
        for (int k = 0; k < 4; ++k) mutated_direct += check_same_as_libknot(g.mutate(m)) ? 1 : 0;
    }
    // The generator must keep the hand-written path busy, or this compares libknot to itself.
    CHECK(direct > total / 10);
    CHECK(mutated_direct > total / 20);
}

TEST_CASE("rdata names are printed as libknot prints them, every octet", "[dns]") {
    // A CNAME whose target has one label of each octet value (and upper-case letters), next to
    // a TXT string of each octet value: both paths must print the same text.
    for (unsigned c = 0; c < 256; ++c) {
        Bytes m = {0x12, 0x34, 0x84, 0x00, 0, 1, 0, 2, 0, 0, 0, 0};
        for (const char* l : {"\x03www", "\x07" "example", "\x04test"})
            m.insert(m.end(), l, l + 1 + static_cast<unsigned char>(l[0]));
        m.insert(m.end(), {0, 0, 5, 0, 1});
        // CNAME: 3 labels "x<c>Y" + pointer to "example.test".
        m.insert(m.end(), {0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6, 3, 'x',
                           static_cast<std::uint8_t>(c), 'Y', 0xC0, 16});
        // TXT: one string "<c>".
        m.insert(m.end(), {0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 2, 1, static_cast<std::uint8_t>(c)});
        CHECK(check_same_as_libknot(m));
    }
}

TEST_CASE("an OPT of class 1 with empty rdata is refused, as libknot refuses it", "[dns]") {
    // knot_pkt_parse takes empty rdata only outside class IN, and OPT's class is the UDP size.
    for (const unsigned arcount : {1u, 2u}) {
        Bytes m = {0, 7, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, static_cast<std::uint8_t>(arcount), 1, 'a', 0, 0, 1, 0, 1};
        if (arcount == 2) m.insert(m.end(), {0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 192, 0, 2, 1});
        m.insert(m.end(), {0, 0, 41, 0, 1, 0, 0, 0, 0, 0, 0});
        check_same_as_libknot(m);
        dnstap_collector::DnsMessage parsed;
        CHECK_FALSE(dnstap_collector::parse_dns(m, parsed));
        CHECK(parsed.error == "bad_rr");
        m[m.size() - 7] = 2;  // UDP size 2: fine
        check_same_as_libknot(m);
        CHECK(dnstap_collector::parse_dns(m, parsed));
        CHECK(parsed.edns_udp_size == 2);
    }
}
