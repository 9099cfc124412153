#include <catch2/catch.hpp>

#include "dnstap_collector/pipeline.hpp"

using namespace dnstap_collector;

namespace {
Exchange client_query(std::initializer_list<std::uint8_t> address, std::string qname = "www.example.com",
                      MessageType type = MessageType::client_query) {
    DnstapMessage m;
    m.type = type;
    std::copy(address.begin(), address.end(), m.query_address.bytes.begin());
    m.query_address.length = static_cast<std::uint8_t>(address.size());
    DnsMessage dns;
    dns.has_question = true;
    dns.qname = std::move(qname);
    m.query = dns;
    Exchange e;
    e.response = std::make_unique<DnstapMessage>(m);  // a response with the same client side, as BIND's CR carries it
    e.response->type = MessageType::client_response;
    e.query = std::make_unique<DnstapMessage>(std::move(m));
    return e;
}

std::string client_of(const Exchange& e) { return e.query->query_address.to_string(); }
}  // namespace

TEST_CASE("client addresses are truncated to the configured prefix") {
    PrivacyOptions o;
    o.client_prefix_v4 = 24;
    o.client_prefix_v6 = 56;
    Privacy privacy(o);
    auto v4 = client_query({192, 0, 2, 77});
    REQUIRE(privacy.apply(v4));
    CHECK(client_of(v4) == "192.0.2.0");
    CHECK(v4.response->query_address.to_string() == "192.0.2.0");
    auto v6 = client_query({0x20, 0x01, 0x0d, 0xb8, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0, 0, 0, 0, 0, 1});
    REQUIRE(privacy.apply(v6));
    CHECK(client_of(v6) == "2001:db8:1234:5600::");
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
    CHECK(a.query->query_address.length == 4);
    CHECK(client_of(a) != "192.0.2.77");
    CHECK(client_of(a) == client_of(b));
    CHECK(client_of(a) == a.response->query_address.to_string());
    CHECK(client_of(a) != client_of(c));

    PrivacyOptions other = o;
    other.hash_key = "another";
    auto d = client_query({192, 0, 2, 77});
    REQUIRE(Privacy(other).apply(d));
    CHECK(client_of(a) != client_of(d));
}

TEST_CASE("excluded kinds and names are not stored") {
    PrivacyOptions o;
    o.exclude_kinds = {"client"};
    o.exclude_names = {"Internal.Example."};
    Privacy privacy(o);
    auto client = client_query({192, 0, 2, 1});
    CHECK_FALSE(privacy.apply(client));
    // The exchange's kind is its query's: an AUTH_QUERY answered with a CLIENT_RESPONSE (BIND
    // with RD=1 and recursion off) is an auth exchange, kept whole.
    auto auth = client_query({192, 0, 2, 1}, "www.example.com", MessageType::auth_query);
    CHECK(privacy.apply(auth));
    CHECK(auth.response.get() != nullptr);

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
