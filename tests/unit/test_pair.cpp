#include <catch2/catch.hpp>

#include "dnstap_collector/metrics.hpp"
#include "dnstap_collector/pair.hpp"

using namespace dnstap_collector;
using namespace std::chrono_literals;

namespace {

DnstapMessage message(MessageType type, std::uint16_t id, std::string qname, std::uint16_t port = 40000,
                      std::int64_t time_ns = 1'700'000'000'000'000'000) {
    DnstapMessage m;
    m.identity = "ns1";
    m.type = type;
    m.family = SocketFamily::inet;
    m.protocol = SocketProtocol::udp;
    m.query_address.length = 4;
    m.query_address.bytes = {127, 0, 0, 1};
    m.response_address.length = 4;
    m.response_address.bytes = {127, 0, 0, 1};
    m.query_port = port;
    m.response_port = 53;
    DnsMessage dns;
    dns.id = id;
    dns.has_question = true;
    dns.qname = std::move(qname);
    dns.qtype = 1;
    dns.qclass = 1;
    if (is_query(type)) {
        m.query_time_ns = time_ns;
        m.query = dns;
    } else {
        dns.flags = 0x8000;
        m.response_time_ns = time_ns;
        m.response = dns;
    }
    return m;
}

struct Harness {
    Metrics metrics;
    std::vector<Exchange> out;
    Pairer pairer{PairOptions{10s, 1s}, metrics, [this](Exchange&& e) { out.push_back(std::move(e)); }};
};

}  // namespace

TEST_CASE("a client query and its response become one exchange") {
    Harness h;
    const auto t0 = Pairer::Clock::now();
    h.pairer.add(message(MessageType::client_query, 7, "www.example.com"), t0);
    CHECK(h.out.empty());
    h.pairer.add(message(MessageType::client_response, 7, "www.example.com"), t0);
    REQUIRE(h.out.size() == 1);
    CHECK(h.out[0].query.has_value());
    CHECK(h.out[0].response.has_value());
    CHECK(h.out[0].message_count() == 2);
    CHECK(h.metrics.pairs_matched == 1);
    CHECK(h.pairer.pending() == 0);
}

TEST_CASE("pairing ignores qname case, as BIND keeps the client's case") {
    Harness h;
    h.pairer.add(message(MessageType::client_query, 9, "WwW.TeSt"));
    h.pairer.add(message(MessageType::client_response, 9, "www.test"));
    REQUIRE(h.out.size() == 1);
    CHECK(h.out[0].message_count() == 2);
}

TEST_CASE("a response that arrives before its query still pairs") {
    Harness h;
    h.pairer.add(message(MessageType::client_response, 3, "a.test"));
    h.pairer.add(message(MessageType::client_query, 3, "a.test"));
    REQUIRE(h.out.size() == 1);
    CHECK(h.out[0].message_count() == 2);
}

TEST_CASE("an auth query pairs with a client response (BIND types the response by RD)") {
    Harness h;
    h.pairer.add(message(MessageType::auth_query, 5, "b.test"));
    h.pairer.add(message(MessageType::client_response, 5, "b.test"));
    REQUIRE(h.out.size() == 1);
    CHECK(h.out[0].message_count() == 2);
}

TEST_CASE("different ports, ids or names never pair") {
    Harness h;
    h.pairer.add(message(MessageType::client_query, 1, "a.test", 1000));
    h.pairer.add(message(MessageType::client_response, 1, "a.test", 1001));
    h.pairer.add(message(MessageType::client_response, 2, "a.test", 1000));
    h.pairer.add(message(MessageType::client_response, 1, "b.test", 1000));
    CHECK(h.out.empty());
    CHECK(h.pairer.pending() == 4);
}

TEST_CASE("an unanswered query is emitted alone after the query timeout") {
    Harness h;
    const auto t0 = Pairer::Clock::now();
    h.pairer.add(message(MessageType::client_query, 1, "slow.test"), t0);
    h.pairer.expire(t0 + 9s);
    CHECK(h.out.empty());
    h.pairer.expire(t0 + 10s);
    REQUIRE(h.out.size() == 1);
    CHECK(h.out[0].query.has_value());
    CHECK_FALSE(h.out[0].response.has_value());
    CHECK(h.metrics.queries_timed_out == 1);
}

TEST_CASE("a lone response is emitted after the response grace") {
    Harness h;
    const auto t0 = Pairer::Clock::now();
    h.pairer.add(message(MessageType::client_response, 1, "orphan.test"), t0);
    h.pairer.expire(t0 + 500ms);
    CHECK(h.out.empty());
    h.pairer.expire(t0 + 1s);
    REQUIRE(h.out.size() == 1);
    CHECK(h.out[0].response.has_value());
    CHECK(h.metrics.responses_orphaned == 1);
}

TEST_CASE("message time expires old queries during imports faster than real time") {
    Harness h;
    const auto t0 = Pairer::Clock::now();
    const std::int64_t second = 1'000'000'000;
    h.pairer.add(message(MessageType::client_query, 1, "old.test", 1, 100 * second), t0);
    h.pairer.add(message(MessageType::client_query, 2, "new.test", 2, 111 * second), t0);
    h.pairer.expire(t0);
    REQUIRE(h.out.size() == 1);
    CHECK(h.out[0].query->query->qname == "old.test");
}

TEST_CASE("a repeated query with the same key emits the older one as a duplicate") {
    Harness h;
    h.pairer.add(message(MessageType::client_query, 4, "dup.test"));
    h.pairer.add(message(MessageType::client_query, 4, "dup.test"));
    CHECK(h.metrics.duplicates == 1);
    REQUIRE(h.out.size() == 1);
    h.pairer.add(message(MessageType::client_response, 4, "dup.test"));
    REQUIRE(h.out.size() == 2);
    CHECK(h.out[1].message_count() == 2);
}

TEST_CASE("messages without a question are stored at once, unpaired") {
    Harness h;
    DnstapMessage m = message(MessageType::client_response, 1, "x.test");
    m.response->has_question = false;
    h.pairer.add(std::move(m));
    REQUIRE(h.out.size() == 1);
    CHECK(h.pairer.pending() == 0);
}

TEST_CASE("flush_all emits everything pending and every message exactly once") {
    Harness h;
    for (std::uint16_t i = 0; i < 100; ++i) h.pairer.add(message(MessageType::client_query, i, "q.test"));
    for (std::uint16_t i = 0; i < 50; ++i) h.pairer.add(message(MessageType::client_response, i, "q.test"));
    h.pairer.add(message(MessageType::client_response, 500, "q.test"));
    h.pairer.flush_all();
    std::uint32_t messages = 0;
    for (const auto& e : h.out) messages += e.message_count();
    CHECK(messages == 151);
    CHECK(h.out.size() == 101);
    CHECK(h.pairer.pending() == 0);
}
