// Pairing: each query with its response. One Pairer per worker, never shared, so no locks.
// Input: decoded messages. Output: Exchanges (a pair, a lone query after the timeout, or a
// response whose query never came).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <unordered_map>
#include <list>
#include <vector>

#include "dnstap_collector/decode.hpp"

namespace dnstap_collector {

struct Metrics;

struct Exchange {
    std::optional<DnstapMessage> query;     // *_QUERY message, if seen
    std::optional<DnstapMessage> response;  // *_RESPONSE message, if seen
    std::uint32_t message_count() const noexcept { return (query ? 1u : 0u) + (response ? 1u : 0u); }
    const DnstapMessage& any() const noexcept { return query ? *query : *response; }
};

// The columns every output shares, derived once from the pair: which message supplies the
// question, which the answer, the exchange time and the latency.
struct ExchangeView {
    const DnstapMessage& first;       // the query if there is one, else the response
    const DnsMessage* question;       // query DNS if present, else response DNS (may be null)
    const DnsMessage* answer;         // response DNS (null without a response)
    std::int64_t time_ns;             // query time when known, else response time; -1 if neither
    std::int64_t response_time_ns;    // -1 without a response time
    std::int64_t latency_us;          // -1 unless both times are known (may be < 0 on clock skew)
    explicit ExchangeView(const Exchange& e) noexcept;
};

// One line per exchange in the spirit of dnstap-read, and one JSON object, for `tail`.
std::string format_exchange_text(const Exchange& e);
std::string format_exchange_json(const Exchange& e);

struct PairKey {
    std::string identity;
    SocketProtocol protocol{};
    IpAddress query_address, response_address;
    std::uint32_t query_port = 0, response_port = 0;
    std::uint16_t dns_id = 0;
    std::string qname;  // lowercase
    std::uint16_t qtype = 0;
    friend bool operator==(const PairKey&, const PairKey&) = default;
};
struct PairKeyHash { std::size_t operator()(const PairKey& k) const noexcept; };

// Extract the key; false for messages that cannot be paired (no DNS payload or question):
// those are emitted on their own at once.
bool pair_key_of(const DnstapMessage& m, PairKey& key);

struct PairOptions {
    std::chrono::milliseconds query_timeout{10'000};    // lone query kept this long
    std::chrono::milliseconds response_grace{1'000};    // lone response waits this long for its query
};

class Pairer {
public:
    using Emit = std::function<void(Exchange&&)>;
    using Clock = std::chrono::steady_clock;

    Pairer(PairOptions options, Metrics& metrics, Emit emit);

    void add(DnstapMessage&& m, Clock::time_point now = Clock::now());
    // Emit what waited too long, by wall clock or by message time (imports run faster than
    // real time, so the newest message time seen also advances the clock).
    void expire(Clock::time_point now = Clock::now());
    void flush_all();  // end of input / shutdown
    std::size_t pending() const noexcept { return table_.size(); }

private:
    // Arrival order per side. A matched entry leaves its list at once (the table keeps the
    // list position), so the lists hold only what is really waiting.
    struct Waiting {
        const PairKey* key;  // the table's own key: node-based map, stable until erased
        Clock::time_point arrived;
        std::int64_t message_time_ns;
    };
    using WaitList = std::list<Waiting>;
    struct Pending {
        Exchange exchange;
        WaitList::iterator position;
    };
    using Table = std::unordered_map<PairKey, Pending, PairKeyHash>;

    void wait_for_partner(PairKey&& key, DnstapMessage&& m, bool query, Clock::time_point now);
    Exchange take(Table::iterator it);
    void expire_side(WaitList& list, std::chrono::milliseconds timeout, Clock::time_point now, bool query);
    void emit_alone(Exchange&& e, bool query);

    PairOptions options_;
    Metrics& metrics_;
    Emit emit_;
    Table table_;
    WaitList waiting_queries_, waiting_responses_;
    std::int64_t newest_message_ns_ = 0;
};

}  // namespace dnstap_collector
