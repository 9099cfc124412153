#include <catch2/catch.hpp>

#include "dnstap_collector/pipeline.hpp"

using namespace dnstap_collector;

namespace {
DnstapMessage client_query(std::initializer_list<std::uint8_t> address, std::string qname = "www.example.com") {
    DnstapMessage m;
    m.type = MessageType::client_query;
    std::copy(address.begin(), address.end(), m.query_address.bytes.begin());
    m.query_address.length = static_cast<std::uint8_t>(address.size());
    DnsMessage dns;
    dns.has_question = true;
    dns.qname = std::move(qname);
    m.query = dns;
    return m;
}
}  // namespace

TEST_CASE("client addresses are truncated to the configured prefix") {
    PrivacyOptions o;
    o.client_prefix_v4 = 24;
    o.client_prefix_v6 = 56;
    Privacy privacy(o);
    auto v4 = client_query({192, 0, 2, 77});
    REQUIRE(privacy.apply(v4));
    CHECK(v4.query_address.to_string() == "192.0.2.0");
    auto v6 = client_query({0x20, 0x01, 0x0d, 0xb8, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0, 0, 0, 0, 0, 1});
    REQUIRE(privacy.apply(v6));
    CHECK(v6.query_address.to_string() == "2001:db8:1234:5600::");
}

TEST_CASE("a keyed hash hides the address, keeps its family, and is stable per key") {
    PrivacyOptions o;
    o.hash_key = "secret";
    Privacy privacy(o);
    auto a = client_query({192, 0, 2, 77});
    auto b = client_query({192, 0, 2, 77});
    auto c = client_query({192, 0, 2, 78});
    REQUIRE(privacy.apply(a));
    REQUIRE(privacy.apply(b));
    REQUIRE(privacy.apply(c));
    CHECK(a.query_address.length == 4);
    CHECK(a.query_address.to_string() != "192.0.2.77");
    CHECK(a.query_address == b.query_address);
    CHECK_FALSE(a.query_address == c.query_address);

    PrivacyOptions other = o;
    other.hash_key = "another";
    auto d = client_query({192, 0, 2, 77});
    REQUIRE(Privacy(other).apply(d));
    CHECK_FALSE(a.query_address == d.query_address);
}

TEST_CASE("excluded kinds and names are not stored") {
    PrivacyOptions o;
    o.exclude_kinds = {"client"};
    o.exclude_names = {"Internal.Example."};
    Privacy privacy(o);
    auto client = client_query({192, 0, 2, 1});
    CHECK_FALSE(privacy.apply(client));

    PrivacyOptions names_only;
    names_only.exclude_names = {"internal.example"};
    Privacy by_name(names_only);
    auto inside = client_query({192, 0, 2, 1}, "Host.INTERNAL.example");
    auto apex = client_query({192, 0, 2, 1}, "internal.example");
    auto outside = client_query({192, 0, 2, 1}, "notinternal.example");
    CHECK_FALSE(by_name.apply(inside));
    CHECK_FALSE(by_name.apply(apex));
    CHECK(by_name.apply(outside));
}
