#include <catch2/catch.hpp>

#include <thread>

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
    CHECK(h.out[0].query.get() != nullptr);
    CHECK(h.out[0].response.get() != nullptr);
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
    CHECK(h.out[0].query.get() != nullptr);
    CHECK_FALSE(h.out[0].response.get() != nullptr);
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
    CHECK(h.out[0].response.get() != nullptr);
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

TEST_CASE("next() + add_next() pair like add(), and recycled storage is decoded into again") {
    Harness h;
    const auto t0 = Pairer::Clock::now();
    h.pairer.next() = message(MessageType::client_query, 11, "Reuse.Test");
    h.pairer.add_next(t0);
    CHECK(h.pairer.pending() == 1);
    DnstapMessage& r = h.pairer.next();
    CHECK(&r == &h.pairer.next());  // the same until add_next() takes it
    r = message(MessageType::client_response, 11, "reuse.test");
    h.pairer.add_next(t0);
    REQUIRE(h.out.size() == 1);
    CHECK(h.out[0].query->query->qname == "Reuse.Test");
    CHECK(h.out[0].response->response->qname == "reuse.test");

    h.pairer.recycle(h.out);
    CHECK(h.out.empty());
    // The next message handed out carries a recycled message's storage: whatever it holds,
    // adding a fresh one must pair as usual.
    h.pairer.next() = message(MessageType::client_query, 12, "again.test");
    h.pairer.add_next(t0);
    h.pairer.add(message(MessageType::client_response, 12, "again.test"), t0);
    REQUIRE(h.out.size() == 1);
    CHECK(h.out[0].message_count() == 2);
    CHECK(h.out[0].query->query->id == 12);
    CHECK(h.pairer.pending() == 0);
}

TEST_CASE("identity, protocol, addresses and qtype are part of the key") {
    Harness h;
    DnstapMessage q = message(MessageType::client_query, 1, "k.test");
    DnstapMessage r = message(MessageType::client_response, 1, "k.test");
    r.identity = "ns2";
    h.pairer.add(DnstapMessage(q));
    h.pairer.add(DnstapMessage(r));
    CHECK(h.out.empty());
    r = message(MessageType::client_response, 1, "k.test");
    r.protocol = SocketProtocol::tcp;
    h.pairer.add(DnstapMessage(r));
    r = message(MessageType::client_response, 1, "k.test");
    r.query_address.bytes[3] = 2;
    h.pairer.add(DnstapMessage(r));
    r = message(MessageType::client_response, 1, "k.test");
    r.response->qtype = 28;
    h.pairer.add(DnstapMessage(r));
    CHECK(h.out.empty());
    CHECK(h.pairer.pending() == 5);
    h.pairer.add(message(MessageType::client_response, 1, "K.TEST"));
    REQUIRE(h.out.size() == 1);
    CHECK(h.out[0].message_count() == 2);
}

TEST_CASE("resolver messages pair without the initiator's address and port") {
    Harness h;
    DnstapMessage q = message(MessageType::resolver_query, 3, "r.test", 1111);
    DnstapMessage r = message(MessageType::resolver_response, 3, "r.test", 2222);
    r.query_address.bytes = {0, 0, 0, 0};
    h.pairer.add(std::move(q));
    h.pairer.add(std::move(r));
    REQUIRE(h.out.size() == 1);
    CHECK(h.out[0].message_count() == 2);
}

TEST_CASE("many messages in and out of the table in mixed order: every pair found once") {
    // Exercises the open-addressing table: growth, removal with backward shifts, collisions.
    Harness h;
    const auto t0 = Pairer::Clock::now();
    constexpr int n = 20000;
    std::uint64_t x = 88172645463325252ull;
    auto rnd = [&] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return x;
    };
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
    for (int i = n - 1; i > 0; --i) std::swap(order[static_cast<std::size_t>(i)], order[rnd() % static_cast<std::uint64_t>(i + 1)]);
    auto name = [](int i) { return "n" + std::to_string(i % 97) + ".test"; };
    auto id = [](int i) { return static_cast<std::uint16_t>(i / 97); };
    auto port = [](int i) { return static_cast<std::uint16_t>(1000 + i % 3); };
    for (int i = 0; i < n; ++i) h.pairer.add(message(MessageType::client_query, id(i), name(i), port(i)), t0);
    CHECK(h.pairer.pending() == static_cast<std::size_t>(n));
    std::size_t recycled = 0;
    for (int k = 0; k < n; ++k) {
        const int i = order[static_cast<std::size_t>(k)];
        h.pairer.add(message(MessageType::client_response, id(i), name(i), port(i)), t0);
        REQUIRE(h.out.size() == 1);
        REQUIRE(h.out[0].message_count() == 2);
        CHECK(h.out[0].query->query->qname == h.out[0].response->response->qname);
        CHECK(h.out[0].query->query->id == id(i));
        CHECK(h.out[0].query->query_port == port(i));
        ++recycled;
        h.pairer.recycle(h.out);
    }
    CHECK(recycled == static_cast<std::size_t>(n));
    CHECK(h.pairer.pending() == 0);
    CHECK(h.metrics.pairs_matched == static_cast<std::uint64_t>(n));
    CHECK(h.metrics.duplicates == 0);
}

TEST_CASE("add_next() without a time reads the clock again after expire()") {
    Harness h;
    h.pairer.next() = message(MessageType::client_query, 1, "warm.test");
    h.pairer.add_next();  // reads the clock and keeps the reading for a few messages
    std::this_thread::sleep_for(20ms);
    h.pairer.expire(Pairer::Clock::now());
    const auto before = Pairer::Clock::now();
    h.pairer.next() = message(MessageType::client_query, 2, "late.test");
    h.pairer.add_next();
    // Arrived at `before` or later: still waiting just short of the timeout from then.
    h.pairer.expire(before + 9990ms);
    CHECK(h.out.size() == 1);  // only warm.test (it arrived 20 ms earlier)
    h.pairer.expire(before + 10s + 1s);
    CHECK(h.out.size() == 2);
}
