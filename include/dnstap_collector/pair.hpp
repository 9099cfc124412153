// Pairing: each query with its response. One Pairer per worker, never shared, so no locks.
// Input: decoded messages. Output: Exchanges (a pair, a lone query after the timeout, or a
// response whose query never came).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "dnstap_collector/decode.hpp"

namespace dnstap_collector {

struct Metrics;

// The messages are held by pointer: the pairer hands over the very objects it decoded into
// and takes them back through recycle(), so a message is never moved (it is large).
struct Exchange {
    std::unique_ptr<DnstapMessage> query;     // *_QUERY message, if seen
    std::unique_ptr<DnstapMessage> response;  // *_RESPONSE message, if seen
    std::uint32_t message_count() const noexcept { return (query ? 1u : 0u) + (response ? 1u : 0u); }
    const DnstapMessage& any() const noexcept { return query ? *query : *response; }
    Exchange clone() const;  // deep copy, for a fan-out to several sinks
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

struct PairOptions {
    std::chrono::milliseconds query_timeout{10'000};    // lone query kept this long
    std::chrono::milliseconds response_grace{1'000};    // lone response waits this long for its query
};

// The pairing key: identity, protocol, both addresses and ports (the initiator's side only
// when pairs_on_query_side()), DNS id, qtype and qname (compared case-insensitively, as BIND
// keeps the client's case). Messages without a DNS payload, a question or a type cannot be
// paired: they are emitted on their own at once.
//
// Steady state allocates nothing: waiting messages live in reused slots, the table is open
// addressing over slot numbers, the wait lists are linked through the slots, and the
// messages of emitted exchanges (with their strings and answer vectors) come back through
// recycle() when the sink left them in place.
class Pairer {
public:
    using Emit = std::function<void(Exchange&&)>;
    using Clock = std::chrono::steady_clock;

    Pairer(PairOptions options, Metrics& metrics, Emit emit);
    // Builds each exchange at the end of `out` (no Exchange is moved) and then
    // calls `emitted`, which may remove it again (filters) or hand `out` off. `out` must
    // have room (reserve) for the exchanges emitted before `emitted` empties it.
    Pairer(PairOptions options, Metrics& metrics, std::vector<Exchange>& out, std::function<void()> emitted);
    ~Pairer();
    Pairer(const Pairer&) = delete;
    Pairer& operator=(const Pairer&) = delete;

    void add(DnstapMessage&& m, Clock::time_point now = Clock::now());
    // The same without a move: decode into next() (a reused message, capacity kept), then
    // add_next(). next() returns the same message until add_next() takes it.
    DnstapMessage& next();
    void add_next(Clock::time_point now);
    void add_next();  // arrival time from a clock read every few messages (they come in bursts)
    // Takes back the messages of exchanges the sink is done with (and left in place), to be
    // decoded into again; clears `done`.
    void recycle(std::vector<Exchange>& done) noexcept;
    // Emit what waited too long, by wall clock or by message time (imports run faster than
    // real time, so the newest message time seen also advances the clock).
    void expire(Clock::time_point now = Clock::now());
    void flush_all();  // end of input / shutdown
    std::size_t pending() const noexcept { return size_; }

private:
    static constexpr std::uint32_t none = 0xFFFFFFFFu;

    // Everything of the key but identity and qname, which are compared in the message itself.
    struct Key {
        std::uint64_t hash = 0;
        IpAddress query_address, response_address;
        std::uint32_t query_port = 0, response_port = 0;
        std::uint16_t dns_id = 0, qtype = 0;
        SocketProtocol protocol{};
    };
    struct Slot {
        std::unique_ptr<DnstapMessage> message;
        Key key;
        Clock::time_point arrived;
        std::int64_t message_time_ns = 0;
        std::uint32_t prev = none, next = none;  // arrival order on its side
        bool query = false;
    };
    struct WaitList {
        std::uint32_t head = none, tail = none;
    };
    struct Bucket {
        std::uint32_t slot = none;
        std::uint32_t hash_low = 0;
    };

    static bool key_of(const DnstapMessage& m, Key& key) noexcept;
    bool same_key(const Slot& s, const Key& key, const DnstapMessage& m) const noexcept;
    std::size_t find(const Key& key, const DnstapMessage& m) const noexcept;  // bucket or npos
    void insert_bucket(std::uint32_t slot);
    void erase_bucket(std::size_t bucket) noexcept;
    void grow();

    std::uint32_t new_slot();
    void wait(std::uint32_t slot, bool query, Clock::time_point now);
    std::unique_ptr<DnstapMessage> take(std::size_t bucket);  // leaves table, list and slot
    void unlink(std::uint32_t slot) noexcept;
    void expire_side(WaitList& list, std::chrono::milliseconds timeout, Clock::time_point now, bool query);
    void emit_alone(std::unique_ptr<DnstapMessage> m, bool query);
    void emit_pair(std::unique_ptr<DnstapMessage> q, std::unique_ptr<DnstapMessage> r);
    std::unique_ptr<DnstapMessage> fresh();

    PairOptions options_;
    Metrics& metrics_;
    Emit emit_;
    std::vector<Exchange>* out_ = nullptr;
    std::function<void()> emitted_;
    Exchange scratch_;  // the exchange being emitted, with an Emit callback
    Exchange& start_exchange();
    void finish_exchange(Exchange& e);
    std::vector<Slot> slots_;
    std::vector<std::uint32_t> free_slots_;
    std::vector<Bucket> buckets_;            // power of two, at most half full
    std::size_t size_ = 0;
    WaitList waiting_queries_, waiting_responses_;
    std::unique_ptr<DnstapMessage> next_;    // what next() handed out
    std::vector<std::unique_ptr<DnstapMessage>> spare_;    // recycled messages, decoded into again
    std::int64_t newest_message_ns_ = 0;
    Clock::time_point coarse_now_{};
    unsigned coarse_uses_ = 0;
};

}  // namespace dnstap_collector
