#include "dnstap_collector/pair.hpp"

#include "dnstap_collector/metrics.hpp"

namespace dnstap_collector {

namespace {
std::uint64_t mix(std::uint64_t h, std::uint64_t v) noexcept {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h;
}
std::uint64_t hash_bytes(std::string_view s) noexcept { return std::hash<std::string_view>{}(s); }
std::uint64_t hash_address(const IpAddress& a) noexcept {
    return hash_bytes(std::string_view(reinterpret_cast<const char*>(a.bytes.data()), a.length));
}
}  // namespace

std::size_t PairKeyHash::operator()(const PairKey& k) const noexcept {
    std::uint64_t h = hash_bytes(k.identity);
    h = mix(h, static_cast<std::uint64_t>(k.protocol));
    h = mix(h, hash_address(k.query_address));
    h = mix(h, hash_address(k.response_address));
    h = mix(h, (std::uint64_t{k.query_port} << 32) | k.response_port);
    h = mix(h, (std::uint64_t{k.dns_id} << 16) | k.qtype);
    h = mix(h, hash_bytes(k.qname));
    return static_cast<std::size_t>(h);
}

bool pair_key_of(const DnstapMessage& m, PairKey& key) {
    const DnsMessage* dns = m.primary();
    if (dns == nullptr || !dns->has_question || m.type == MessageType::unknown) return false;
    key.identity = m.identity;
    key.protocol = m.protocol;
    if (pairs_on_query_side(m.type)) {
        key.query_address = m.query_address;
        key.query_port = m.query_port;
    } else {
        key.query_address = IpAddress{};
        key.query_port = 0;
    }
    key.response_address = m.response_address;
    key.response_port = m.response_port;
    key.dns_id = dns->id;
    key.qname = lowercase_name(dns->qname);
    key.qtype = dns->qtype;
    return true;
}

Pairer::Pairer(PairOptions options, Metrics& metrics, Emit emit)
    : options_(options), metrics_(metrics), emit_(std::move(emit)) {}

void Pairer::emit_alone(Exchange&& e, bool query) {
    (query ? metrics_.queries_timed_out : metrics_.responses_orphaned).fetch_add(1, std::memory_order_relaxed);
    emit_(std::move(e));
}

Exchange Pairer::take(Table::iterator it) {
    const bool query = it->second.exchange.query.has_value();
    (query ? waiting_queries_ : waiting_responses_).erase(it->second.position);
    Exchange e = std::move(it->second.exchange);
    table_.erase(it);
    return e;
}

void Pairer::add(DnstapMessage&& m, Clock::time_point now) {
    const bool query = is_query(m.type);
    newest_message_ns_ = std::max(newest_message_ns_, m.event_time_ns());

    PairKey key;
    if (!pair_key_of(m, key)) {
        // Nothing to pair on (no DNS payload or no question): stored on its own at once.
        Exchange e;
        (query ? e.query : e.response) = std::move(m);
        emit_alone(std::move(e), query);
        return;
    }

    auto it = table_.find(key);
    if (it == table_.end()) {
        wait_for_partner(std::move(key), std::move(m), query, now);
        return;
    }
    if (it->second.exchange.query.has_value() != query) {
        Exchange done = take(it);
        (query ? done.query : done.response) = std::move(m);
        metrics_.pairs_matched.fetch_add(1, std::memory_order_relaxed);
        emit_(std::move(done));
        return;
    }
    // Same key on the same side while one is pending (retransmission, or a sender that
    // reuses ids fast): the older one goes out alone; the newer one waits.
    metrics_.duplicates.fetch_add(1, std::memory_order_relaxed);
    emit_alone(take(it), query);
    wait_for_partner(std::move(key), std::move(m), query, now);
}

void Pairer::wait_for_partner(PairKey&& key, DnstapMessage&& m, bool query, Clock::time_point now) {
    WaitList& list = query ? waiting_queries_ : waiting_responses_;
    const std::int64_t message_ns = m.event_time_ns();
    Pending p;
    (query ? p.exchange.query : p.exchange.response) = std::move(m);
    auto [it, inserted] = table_.emplace(std::move(key), std::move(p));
    (void)inserted;  // the caller looked the key up: it is new
    it->second.position = list.insert(list.end(), Waiting{&it->first, now, message_ns});
}

void Pairer::expire_side(WaitList& list, std::chrono::milliseconds timeout, Clock::time_point now, bool query) {
    const std::int64_t timeout_ns = std::chrono::nanoseconds(timeout).count();
    while (!list.empty()) {
        const Waiting& w = list.front();
        const bool by_wall_clock = now - w.arrived >= timeout;
        const bool by_message_time = w.message_time_ns > 0 && newest_message_ns_ - w.message_time_ns >= timeout_ns;
        if (!by_wall_clock && !by_message_time) break;
        emit_alone(take(table_.find(*w.key)), query);
    }
}

void Pairer::expire(Clock::time_point now) {
    expire_side(waiting_queries_, options_.query_timeout, now, true);
    expire_side(waiting_responses_, options_.response_grace, now, false);
}

void Pairer::flush_all() {
    while (!table_.empty()) {
        const bool query = table_.begin()->second.exchange.query.has_value();
        emit_alone(take(table_.begin()), query);
    }
}

}  // namespace dnstap_collector
