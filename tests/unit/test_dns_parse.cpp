#include <catch2/catch.hpp>

#include <arpa/inet.h>

#include <array>
#include <random>
#include <string>
#include <vector>

#include "dns/dns_internal.hpp"
#include "dnstap_collector/dns.hpp"
#include "dns_compare.hpp"

using namespace dnstap_collector;

namespace {

// Builds DNS wire messages by hand so every odd case is explicit.
struct Wire {
    std::vector<std::uint8_t> b;

    Wire& u8(unsigned v) {
        b.push_back(static_cast<std::uint8_t>(v));
        return *this;
    }
    Wire& u16(unsigned v) { return u8(v >> 8).u8(v & 0xFF); }
    Wire& u32(std::uint32_t v) { return u16(v >> 16).u16(v & 0xFFFF); }
    Wire& raw(std::string_view s) {
        b.insert(b.end(), s.begin(), s.end());
        return *this;
    }
    // "www.example.test" -> labels; "" -> root. No escapes: use label() for odd octets.
    Wire& name(std::string_view n) {
        while (!n.empty()) {
            const auto dot = n.find('.');
            const auto label = n.substr(0, dot);
            u8(static_cast<unsigned>(label.size())).raw(label);
            n = dot == std::string_view::npos ? std::string_view{} : n.substr(dot + 1);
        }
        return u8(0);
    }
    Wire& label(std::string_view l) { return u8(static_cast<unsigned>(l.size())).raw(l); }
    Wire& pointer(unsigned offset) { return u16(0xC000 | offset); }
    Wire& header(std::uint16_t id, std::uint16_t flags, unsigned qd, unsigned an, unsigned ns,
                 unsigned ar) {
        return u16(id).u16(flags).u16(qd).u16(an).u16(ns).u16(ar);
    }
    // RR header after the owner; rdlength given explicitly.
    Wire& rr(unsigned type, unsigned rclass, std::uint32_t ttl, unsigned rdlength) {
        return u16(type).u16(rclass).u32(ttl).u16(rdlength);
    }
    std::span<const std::uint8_t> span() const { return b; }
};

constexpr unsigned qname_offset = 12;

// Every message here is also parsed by libknot alone, which must give the same result.
DnsMessage parse(const Wire& w, bool expect_ok = true) {
    dns_compare::check_same_as_libknot(w.span());
    DnsMessage m;
    const bool ok = parse_dns(w.span(), m);
    INFO("error: " << m.error);
    CHECK(ok == expect_ok);
    CHECK(ok == m.error.empty());
    return m;
}

// A response to www.Example.test/A with the given answers already appended by `add`.
template <typename F>
Wire response(unsigned ancount, F add, unsigned arcount = 0) {
    Wire w;
    w.header(0xBEEF, 0x8580, 1, ancount, 0, arcount).name("www.Example.test").u16(1).u16(1);
    add(w);
    return w;
}

}  // namespace

TEST_CASE("header and question are decoded, qname keeps its case", "[dns]") {
    Wire w;
    w.header(0x1234, 0x0120, 1, 0, 0, 0).name("WwW.ExAmPlE.TeSt").u16(28).u16(1);
    const DnsMessage m = parse(w);
    CHECK(m.size == w.b.size());
    CHECK(m.id == 0x1234);
    CHECK(m.flags == 0x0120);
    CHECK_FALSE(m.qr());
    CHECK(m.rd());
    CHECK(m.ad());
    CHECK(m.opcode() == 0);
    CHECK(m.qdcount == 1);
    CHECK(m.has_question);
    CHECK(m.qname == "WwW.ExAmPlE.TeSt");
    CHECK(lowercase_name(m.qname) == "www.example.test");
    CHECK(m.qtype == 28);
    CHECK(m.qclass == 1);
    CHECK_FALSE(m.has_edns);
    CHECK(m.answers.empty());
}

TEST_CASE("root qname is a single dot", "[dns]") {
    Wire w;
    w.header(1, 0, 1, 0, 0, 0).name("").u16(2).u16(1);
    CHECK(parse(w).qname == ".");
}

TEST_CASE("answers are in presentation format with lowercase names and no trailing dots",
          "[dns]") {
    const Wire w = response(6, [](Wire& r) {
        r.pointer(qname_offset).rr(1, 1, 300, 4).u8(192).u8(0).u8(2).u8(1);
        r.pointer(qname_offset).rr(28, 1, 60, 16).u16(0x2001).u16(0xdb8);
        for (int i = 0; i < 5; ++i) r.u16(0);
        r.u16(1);
        r.pointer(qname_offset).rr(15, 1, 300, 2 + 6).u16(10).label("MX1").pointer(qname_offset + 4);
        r.pointer(qname_offset).rr(5, 1, 300, 2).pointer(qname_offset + 4);  // CNAME to the zone
        // TXT whose string ends with a dot: it is quoted, so not a name.
        r.pointer(qname_offset).rr(16, 1, 300, 6).label("end.").u8(0);
        // SRV to the root target.
        r.pointer(qname_offset).rr(33, 1, 300, 7).u16(0).u16(5).u16(443).u8(0);
    });
    const DnsMessage m = parse(w);
    REQUIRE(m.answers.size() == 6);
    CHECK(m.answers[0].name == "www.example.test");
    CHECK(m.answers[0].type == 1);
    CHECK(m.answers[0].rclass == 1);
    CHECK(m.answers[0].ttl == 300);
    CHECK(m.answers[0].rdata == "192.0.2.1");
    CHECK(m.answers[1].rdata == "2001:db8::1");
    CHECK(m.answers[2].rdata == "10 mx1.example.test");
    CHECK(m.answers[3].rdata == "example.test");
    CHECK(m.answers[4].rdata == "\"end.\" \"\"");
    CHECK(m.answers[5].rdata == "0 5 443 .");
    CHECK(m.aa());
    CHECK(m.qr());
    CHECK(rcode_to_text(m.rcode) == "NOERROR");
}

TEST_CASE("unknown types print as RFC 3597 generic rdata", "[dns]") {
    const Wire w = response(2, [](Wire& r) {
        r.pointer(qname_offset).rr(65280, 1, 300, 3).u8(1).u8(2).u8(3);
        r.pointer(qname_offset).rr(65281, 1, 300, 0);
    });
    const DnsMessage m = parse(w);
    REQUIRE(m.answers.size() == 2);
    CHECK(m.answers[0].rdata == "\\# 3 010203");
    CHECK(m.answers[1].rdata == "\\# 0");
    CHECK(type_to_text(65280) == "TYPE65280");
}

TEST_CASE("non-ASCII octets in rdata and names are escaped as \\DDD", "[dns]") {
    Wire w;
    w.header(7, 0x8400, 1, 2, 0, 0);
    w.label(std::string("a.b\\c d\x01\xff", 9)).label("Ex").u8(0).u16(16).u16(1);
    w.pointer(qname_offset).rr(16, 1, 0, 4).label("\xc3\xa9\x7f");
    w.pointer(qname_offset).rr(5, 1, 0, 6).label("\xff" "A;").pointer(qname_offset + 10);
    const DnsMessage m = parse(w);
    CHECK(m.qname == "a\\.b\\\\c\\032d\\001\\255.Ex");
    REQUIRE(m.answers.size() == 2);
    CHECK(m.answers[0].name == "a\\.b\\\\c\\032d\\001\\255.ex");
    CHECK(m.answers[0].rdata == "\"\\195\\169\\127\"");
    CHECK(m.answers[1].rdata == "\\255a\\;.ex");
    for (const auto& s : {m.qname, m.answers[0].name, m.answers[0].rdata, m.answers[1].rdata})
        for (const char c : s) CHECK((c >= 0x20 && c < 0x7F));
}

TEST_CASE("name_to_text escapes, lowercases on request and refuses malformed names", "[dns]") {
    std::string out;
    Wire w;
    w.label("WWW").label(std::string("x.\\\"y\0", 6)).u8(0);
    REQUIRE(name_to_text(w.span(), out));
    CHECK(out == "www.x\\.\\\\\\\"y\\000");
    REQUIRE(name_to_text(w.span(), out, false));
    CHECK(out == "WWW.x\\.\\\\\\\"y\\000");

    const std::uint8_t root[] = {0};
    REQUIRE(name_to_text(root, out));
    CHECK(out == ".");

    CHECK_FALSE(name_to_text({}, out));
    const std::uint8_t pointer[] = {0xC0, 0x00};
    CHECK_FALSE(name_to_text(pointer, out));
    const std::uint8_t trailing[] = {1, 'a', 0, 0};
    CHECK_FALSE(name_to_text(trailing, out));
    const std::uint8_t unterminated[] = {3, 'a', 'b', 'c'};
    CHECK_FALSE(name_to_text(unterminated, out));
    const std::uint8_t overlong_label[] = {5, 'a', 0};
    CHECK_FALSE(name_to_text(overlong_label, out));
}

TEST_CASE("EDNS: UDP size, version, DO, extended rcode, client subnet and EDE", "[dns]") {
    Wire w;
    w.header(9, 0x8180, 1, 0, 0, 1).name("example.test").u16(1).u16(1);
    const std::string ede_text = "blocked \xe2\x9c\x93";  // UTF-8 check mark
    const unsigned ecs_len = 4 + 3;
    const unsigned ede_len = 2 + static_cast<unsigned>(ede_text.size());
    w.u8(0).u16(41).u16(1232);
    w.u8(1).u8(0).u16(0x8000);  // extended rcode 1 -> 16 with header rcode 0, version 0, DO
    w.u16(4 + ecs_len + 4 + ede_len);
    w.u16(8).u16(ecs_len).u16(1).u8(24).u8(0).u8(198).u8(51).u8(100);
    w.u16(15).u16(ede_len).u16(15).raw(ede_text);
    const DnsMessage m = parse(w);
    CHECK(m.has_edns);
    CHECK(m.edns_udp_size == 1232);
    CHECK(m.edns_version == 0);
    CHECK(m.edns_do);
    CHECK(m.rcode == 16);
    CHECK(rcode_to_text(m.rcode) == "BADVERS");
    CHECK(m.ecs == "198.51.100.0/24");
    CHECK(m.ede_code == 15);
    CHECK(m.ede_text == "blocked \\226\\156\\147");
}

TEST_CASE("EDNS client subnet for IPv6", "[dns]") {
    Wire w;
    w.header(9, 0, 1, 0, 0, 1).name("example.test").u16(1).u16(1);
    w.u8(0).u16(41).u16(4096).u32(0).u16(4 + 4 + 6);
    w.u16(8).u16(4 + 6).u16(2).u8(48).u8(0).u16(0x2001).u16(0x0db8).u16(0x0001);
    const DnsMessage m = parse(w);
    CHECK(m.ecs == "2001:db8:1::/48");
    CHECK(m.ede_code == -1);
    CHECK_FALSE(m.edns_do);
    CHECK(m.rcode == 0);
}

TEST_CASE("a message cut short keeps header and question", "[dns]") {
    Wire w;
    w.header(0x4242, 0x8180, 1, 1, 0, 0).name("cut.example").u16(1).u16(1);
    w.pointer(qname_offset).u16(1);  // the RR header stops here
    const DnsMessage m = parse(w, false);
    CHECK(m.error == "truncated");
    CHECK(m.id == 0x4242);
    CHECK(m.ancount == 1);
    CHECK(m.has_question);
    CHECK(m.qname == "cut.example");
    CHECK(m.qtype == 1);
}

TEST_CASE("records before the bad one are kept", "[dns]") {
    const Wire w = response(2, [](Wire& r) {
        r.pointer(qname_offset).rr(1, 1, 300, 4).u8(192).u8(0).u8(2).u8(1);
        r.pointer(qname_offset).rr(1, 1, 300, 4).u8(192).u8(0);  // rdata short
    });
    const DnsMessage m = parse(w, false);
    CHECK(m.error == "truncated");
    REQUIRE(m.answers.size() == 1);
    CHECK(m.answers[0].rdata == "192.0.2.1");
}

TEST_CASE("rdata that does not fit its type is an error, framing intact", "[dns]") {
    const Wire w = response(1, [](Wire& r) { r.pointer(qname_offset).rr(1, 1, 300, 3).u8(1).u8(2).u8(3); });
    const DnsMessage m = parse(w, false);
    CHECK(m.error == "bad_rr");
    CHECK(m.qname == "www.Example.test");
}

TEST_CASE("trailing bytes after the last record are reported, records kept", "[dns]") {
    const Wire w = response(1, [](Wire& r) {
        r.pointer(qname_offset).rr(1, 1, 300, 4).u8(192).u8(0).u8(2).u8(1);
        r.u8(0xAA).u8(0xBB);
    });
    const DnsMessage m = parse(w, false);
    CHECK(m.error == "trailing_data");
    CHECK(m.answers.size() == 1);

    Wire q;
    q.header(1, 0, 1, 0, 0, 0).name("a").u16(1).u16(1).u8(0);
    CHECK(parse(q, false).error == "trailing_data");
}

TEST_CASE("only a 12-byte header: header kept, question missing", "[dns]") {
    Wire w;
    w.header(0x0102, 0x0100, 1, 0, 0, 0);
    const DnsMessage m = parse(w, false);
    CHECK(m.error == "truncated");
    CHECK(m.id == 0x0102);
    CHECK(m.qdcount == 1);
    CHECK_FALSE(m.has_question);
    CHECK(m.qname.empty());
}

TEST_CASE("shorter than a header, or empty", "[dns]") {
    DnsMessage m;
    CHECK_FALSE(parse_dns({}, m));
    CHECK(m.error == "truncated");
    const std::uint8_t five[] = {1, 2, 3, 4, 5};
    CHECK_FALSE(parse_dns(five, m));
    CHECK(m.error == "truncated");
    CHECK(m.size == 5);
}

TEST_CASE("compression loops end with bad_compression", "[dns]") {
    SECTION("qname pointing at itself") {
        Wire w;
        w.header(1, 0, 1, 0, 0, 0).pointer(qname_offset).u16(1).u16(1);
        CHECK(parse(w, false).error == "bad_compression");
    }
    SECTION("two owner names pointing at each other") {
        Wire w;
        w.header(1, 0x8000, 1, 2, 0, 0).name("a").u16(1).u16(1);
        const unsigned first = static_cast<unsigned>(w.b.size());
        w.pointer(first + 16).rr(1, 1, 0, 4).u32(0);
        w.pointer(first).rr(1, 1, 0, 4).u32(0);
        const DnsMessage m = parse(w, false);
        CHECK(m.error == "bad_compression");
        CHECK(m.qname == "a");
    }
    SECTION("label then pointer back into the same name") {
        Wire w;
        w.header(1, 0, 1, 0, 0, 0).label("x").pointer(qname_offset).u16(1).u16(1);
        CHECK(parse(w, false).error == "bad_compression");
    }
}

TEST_CASE("names longer than 255 octets are refused", "[dns]") {
    Wire w;
    w.header(1, 0, 1, 0, 0, 0);
    for (int i = 0; i < 5; ++i) w.label(std::string(63, 'a'));  // 5 * 64 = 320 octets
    w.u8(0).u16(1).u16(1);
    const DnsMessage m = parse(w, false);
    CHECK(m.error == "name_too_long");
    CHECK_FALSE(m.has_question);

    // 255 exactly is fine: 3 * 64 + 62 + 1.
    Wire ok;
    ok.header(1, 0, 1, 0, 0, 0);
    for (int i = 0; i < 3; ++i) ok.label(std::string(63, 'b'));
    ok.label(std::string(61, 'c')).u8(0).u16(1).u16(1);
    CHECK(parse(ok).qname.size() == 3 * 64 + 61);
}

TEST_CASE("extended label types are bad names", "[dns]") {
    Wire w;
    w.header(1, 0, 1, 0, 0, 0).u8(0x41).u8(0).u16(1).u16(1);
    CHECK(parse(w, false).error == "bad_name");
}

TEST_CASE("several questions: the first is kept", "[dns]") {
    Wire w;
    w.header(1, 0, 2, 0, 0, 0).name("one").u16(1).u16(1).name("two").u16(1).u16(1);
    const DnsMessage m = parse(w, false);
    CHECK(m.error == "bad_qdcount");
    CHECK(m.qname == "one");
}

TEST_CASE("garbage and mutations never crash and keep output ASCII", "[dns]") {
    std::mt19937 rng(12345);
    const Wire base = response(2, [](Wire& r) {
        r.pointer(qname_offset).rr(15, 1, 300, 2 + 6).u16(10).label("MX1").pointer(qname_offset + 4);
        r.pointer(qname_offset).rr(16, 1, 300, 6).label("hello");
        r.u8(0).u16(41).u16(1232).u32(0).u16(0);
    }, 1);
    DnsMessage m;
    for (int i = 0; i < 20000; ++i) {
        std::vector<std::uint8_t> b = base.b;
        if (i % 2 == 0) {
            const int flips = 1 + static_cast<int>(rng() % 4);
            for (int f = 0; f < flips; ++f) b[rng() % b.size()] = static_cast<std::uint8_t>(rng());
            b.resize(rng() % (b.size() + 1));
        } else {
            b.resize(rng() % 200);
            for (auto& c : b) c = static_cast<std::uint8_t>(rng());
        }
        parse_dns(b, m);
        dns_compare::check_same_as_libknot(b);
        for (const char c : m.qname) REQUIRE((c > 0x20 && c < 0x7F));
        for (const auto& rr : m.answers)
            for (const char c : rr.rdata) REQUIRE((c >= 0x20 && c < 0x7F));
    }
}

TEST_CASE("mnemonics for types, classes, rcodes, opcodes and flags", "[dns]") {
    CHECK(type_to_text(1) == "A");
    CHECK(type_to_text(28) == "AAAA");
    CHECK(type_to_text(65) == "HTTPS");
    CHECK(type_to_text(65280) == "TYPE65280");
    CHECK(class_to_text(1) == "IN");
    CHECK(class_to_text(3) == "CH");
    CHECK(class_to_text(4) == "HS");
    CHECK(class_to_text(254) == "NONE");
    CHECK(class_to_text(255) == "ANY");
    CHECK(class_to_text(7) == "CLASS7");
    CHECK(rcode_to_text(0) == "NOERROR");
    CHECK(rcode_to_text(3) == "NXDOMAIN");
    CHECK(rcode_to_text(5) == "REFUSED");
    CHECK(rcode_to_text(10) == "NOTZONE");
    CHECK(rcode_to_text(16) == "BADVERS");
    CHECK(rcode_to_text(23) == "BADCOOKIE");
    CHECK(rcode_to_text(12) == "RCODE12");
    CHECK(rcode_to_text(4000) == "RCODE4000");
    CHECK(opcode_to_text(0) == "QUERY");
    CHECK(opcode_to_text(4) == "NOTIFY");
    CHECK(opcode_to_text(5) == "UPDATE");
    CHECK(opcode_to_text(7) == "OPCODE7");
    CHECK(flags_to_text(0x8580) == "qr aa rd ra");
    CHECK(flags_to_text(0x0130) == "rd ad cd");
    CHECK(flags_to_text(0x0200) == "tc");
    CHECK(flags_to_text(0) == "");
}

TEST_CASE("AAAA text is exactly inet_ntop's", "[dns]") {
    std::mt19937 rng(3);
    std::vector<std::array<std::uint8_t, 16>> cases;
    auto from_words = [](std::initializer_list<unsigned> w) {
        std::array<std::uint8_t, 16> a{};
        std::size_t i = 0;
        for (const unsigned v : w) {
            a[i++] = static_cast<std::uint8_t>(v >> 8);
            a[i++] = static_cast<std::uint8_t>(v);
        }
        return a;
    };
    cases.push_back(from_words({0, 0, 0, 0, 0, 0, 0, 0}));
    cases.push_back(from_words({0, 0, 0, 0, 0, 0, 0, 1}));
    cases.push_back(from_words({0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0201}));
    cases.push_back(from_words({0, 0, 0, 0, 0, 0, 0xc000, 0x0201}));
    cases.push_back(from_words({0x2001, 0xdb8, 0, 0, 1, 0, 0, 1}));
    cases.push_back(from_words({0x2001, 0, 0xdb8, 0, 0, 0, 0, 0}));
    cases.push_back(from_words({1, 0, 1, 0, 1, 0, 1, 0}));
    cases.push_back(from_words({0xfe80, 0, 0, 0, 0x0abc, 0xdef0, 0x1234, 0x5678}));
    for (int i = 0; i < 20000; ++i) {
        std::array<std::uint8_t, 16> a{};
        for (auto& b : a) b = (rng() % 3 == 0) ? static_cast<std::uint8_t>(rng()) : 0;
        cases.push_back(a);
    }
    for (const auto& a : cases) {
        char expected[INET6_ADDRSTRLEN];
        REQUIRE(inet_ntop(AF_INET6, a.data(), expected, sizeof expected) != nullptr);
        char got[INET6_ADDRSTRLEN];
        const std::size_t n = dns_detail::format_ipv6(a.data(), got);
        REQUIRE(std::string(got, n) == expected);
    }
}
