#include "dnstap_collector/pair.hpp"

#include <algorithm>
#include <cstring>

#include "decode/swar.hpp"
#include "dnstap_collector/metrics.hpp"

namespace dnstap_collector {

namespace {

// Messages kept for reuse beyond those waiting in the table: about two hand-offs' worth.
constexpr std::size_t max_spare = 16384;

inline std::uint64_t mix(std::uint64_t h, std::uint64_t v) noexcept {
    h ^= v;
    h *= 0x9e3779b97f4a7c15ull;
    return h ^ (h >> 29);
}

inline std::uint64_t load_tail(const char* p, std::size_t n) noexcept {
    std::uint64_t w = 0;
    std::memcpy(&w, p, n);
    return w;
}

std::uint64_t hash_text(std::uint64_t h, std::string_view s, bool fold) noexcept {
    const char* p = s.data();
    std::size_t n = s.size();
    h = mix(h, n);
    for (; n >= 8; p += 8, n -= 8) {
        std::uint64_t w;
        std::memcpy(&w, p, 8);
        h = mix(h, fold ? swar::lower(w) : w);
    }
    if (n) {
        const std::uint64_t w = load_tail(p, n);
        h = mix(h, fold ? swar::lower(w) : w);
    }
    return h;
}

inline char fold_char(char c) noexcept {
    return c >= 'A' && c <= 'Z' ? static_cast<char>(c + ('a' - 'A')) : c;
}

// Equal as lowercase_name() would make them.
bool equal_folded(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i] != b[i] && fold_char(a[i]) != fold_char(b[i])) return false;
    return true;
}

std::uint64_t hash_address(std::uint64_t h, const IpAddress& a) noexcept {
    std::uint64_t w0, w1;
    std::memcpy(&w0, a.bytes.data(), 8);
    std::memcpy(&w1, a.bytes.data() + 8, 8);
    return mix(mix(mix(h, w0), w1), a.length);
}

}  // namespace

bool Pairer::key_of(const DnstapMessage& m, Key& key) noexcept {
    const DnsMessage* dns = m.primary();
    if (dns == nullptr || !dns->has_question || m.type == MessageType::unknown) return false;
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
    key.qtype = dns->qtype;
    std::uint64_t h = hash_text(0x243f6a8885a308d3ull, m.identity, false);
    h = mix(h, static_cast<std::uint64_t>(key.protocol));
    h = hash_address(h, key.query_address);
    h = hash_address(h, key.response_address);
    h = mix(h, (std::uint64_t{key.query_port} << 32) | key.response_port);
    h = mix(h, (std::uint64_t{key.dns_id} << 16) | key.qtype);
    key.hash = hash_text(h, dns->qname, true);
    return true;
}

bool Pairer::same_key(const Slot& s, const Key& key, const DnstapMessage& m) const noexcept {
    const Key& k = s.key;
    if (k.hash != key.hash || k.dns_id != key.dns_id || k.qtype != key.qtype || k.protocol != key.protocol ||
        k.query_port != key.query_port || k.response_port != key.response_port ||
        !(k.query_address == key.query_address) || !(k.response_address == key.response_address))
        return false;
    const DnstapMessage& other = *s.message;
    return other.identity == m.identity && equal_folded(other.primary()->qname, m.primary()->qname);
}

std::size_t Pairer::find(const Key& key, const DnstapMessage& m) const noexcept {
    if (buckets_.empty()) return static_cast<std::size_t>(-1);
    const std::size_t mask = buckets_.size() - 1;
    const auto low = static_cast<std::uint32_t>(key.hash);
    for (std::size_t i = static_cast<std::size_t>(key.hash >> 32) & mask;; i = (i + 1) & mask) {
        const Bucket& b = buckets_[i];
        if (b.slot == none) return static_cast<std::size_t>(-1);
        if (b.hash_low == low && same_key(slots_[b.slot], key, m)) return i;
    }
}

void Pairer::insert_bucket(std::uint32_t slot) {
    if ((size_ + 1) * 2 > buckets_.size()) grow();
    const std::uint64_t h = slots_[slot].key.hash;
    const std::size_t mask = buckets_.size() - 1;
    std::size_t i = static_cast<std::size_t>(h >> 32) & mask;
    while (buckets_[i].slot != none) i = (i + 1) & mask;
    buckets_[i] = Bucket{slot, static_cast<std::uint32_t>(h)};
    ++size_;
}

// Linear probing without tombstones: entries after the hole that may move into it do.
void Pairer::erase_bucket(std::size_t hole) noexcept {
    const std::size_t mask = buckets_.size() - 1;
    for (std::size_t i = (hole + 1) & mask; buckets_[i].slot != none; i = (i + 1) & mask) {
        const std::size_t home = static_cast<std::size_t>(slots_[buckets_[i].slot].key.hash >> 32) & mask;
        // Movable when its home is not in (hole, i] (cyclically).
        const bool movable = hole <= i ? (home <= hole || home > i) : (home <= hole && home > i);
        if (movable) {
            buckets_[hole] = buckets_[i];
            hole = i;
        }
    }
    buckets_[hole] = Bucket{};
    --size_;
}

void Pairer::grow() {
    std::vector<Bucket> old = std::move(buckets_);
    buckets_.assign(old.empty() ? 1024 : old.size() * 2, Bucket{});
    const std::size_t mask = buckets_.size() - 1;
    for (const Bucket& b : old) {
        if (b.slot == none) continue;
        std::size_t i = static_cast<std::size_t>(slots_[b.slot].key.hash >> 32) & mask;
        while (buckets_[i].slot != none) i = (i + 1) & mask;
        buckets_[i] = b;
    }
}

Pairer::Pairer(PairOptions options, Metrics& metrics, Emit emit)
    : options_(options), metrics_(metrics), emit_(std::move(emit)) {}

Pairer::Pairer(PairOptions options, Metrics& metrics, std::vector<Exchange>& out, std::function<void()> emitted)
    : options_(options), metrics_(metrics), out_(&out), emitted_(std::move(emitted)) {}

Exchange Exchange::clone() const {
    Exchange c;
    if (query) c.query = std::make_unique<DnstapMessage>(*query);
    if (response) c.response = std::make_unique<DnstapMessage>(*response);
    return c;
}

Exchange& Pairer::start_exchange() {
    if (out_ != nullptr) return out_->emplace_back();
    scratch_.query.reset();
    scratch_.response.reset();
    return scratch_;
}

void Pairer::finish_exchange(Exchange& e) {
    if (out_ != nullptr) {
        if (emitted_) emitted_();
    } else {
        emit_(std::move(e));
    }
}

Pairer::~Pairer() = default;

std::unique_ptr<DnstapMessage> Pairer::fresh() {
    if (spare_.empty()) return std::make_unique<DnstapMessage>();
    auto m = std::move(spare_.back());
    spare_.pop_back();
    return m;
}

DnstapMessage& Pairer::next() {
    if (!next_) next_ = fresh();
    return *next_;
}

void Pairer::recycle(std::vector<Exchange>& done) noexcept {
    try {
        for (Exchange& e : done)
            for (std::unique_ptr<DnstapMessage>* side : {&e.query, &e.response})
                if (*side && spare_.size() < max_spare) spare_.push_back(std::move(*side));
    } catch (...) {
        // Out of memory: what was not taken back is freed below.
    }
    done.clear();
}

std::uint32_t Pairer::new_slot() {
    if (!free_slots_.empty()) {
        const std::uint32_t s = free_slots_.back();
        free_slots_.pop_back();
        return s;
    }
    slots_.emplace_back();
    return static_cast<std::uint32_t>(slots_.size() - 1);
}

void Pairer::unlink(std::uint32_t s) noexcept {
    Slot& slot = slots_[s];
    WaitList& list = slot.query ? waiting_queries_ : waiting_responses_;
    if (slot.prev != none) slots_[slot.prev].next = slot.next; else list.head = slot.next;
    if (slot.next != none) slots_[slot.next].prev = slot.prev; else list.tail = slot.prev;
    slot.prev = slot.next = none;
}

std::unique_ptr<DnstapMessage> Pairer::take(std::size_t bucket) {
    const std::uint32_t s = buckets_[bucket].slot;
    erase_bucket(bucket);
    unlink(s);
    free_slots_.push_back(s);  // capacity: slots_.size(), reserved when the slot was made
    return std::move(slots_[s].message);
}

void Pairer::emit_alone(std::unique_ptr<DnstapMessage> m, bool query) {
    (query ? metrics_.queries_timed_out : metrics_.responses_orphaned).fetch_add(1, std::memory_order_relaxed);
    Exchange& e = start_exchange();
    (query ? e.query : e.response) = std::move(m);
    finish_exchange(e);
}

void Pairer::emit_pair(std::unique_ptr<DnstapMessage> q, std::unique_ptr<DnstapMessage> r) {
    metrics_.pairs_matched.fetch_add(1, std::memory_order_relaxed);
    Exchange& e = start_exchange();
    e.query = std::move(q);
    e.response = std::move(r);
    finish_exchange(e);
}

void Pairer::add(DnstapMessage&& m, Clock::time_point now) {
    next() = std::move(m);
    add_next(now);
}

void Pairer::add_next() {
    // Arrival times only decide expiry after a second or more: a reading at most 32 messages
    // old, and never older than the last expire() (workers call it after each batch), changes
    // nothing; clock_gettime per message was 2% of decoding.
    if (coarse_uses_ == 0) coarse_now_ = Clock::now();
    coarse_uses_ = (coarse_uses_ + 1) % 32;
    add_next(coarse_now_);
}

void Pairer::add_next(Clock::time_point now) {
    DnstapMessage& m = next();
    const bool query = is_query(m.type);
    newest_message_ns_ = std::max(newest_message_ns_, m.event_time_ns());

    Key key;
    if (!key_of(m, key)) {
        // Nothing to pair on (no DNS payload or no question): stored on its own at once.
        emit_alone(std::move(next_), query);
        return;
    }
    const std::size_t found = find(key, m);
    if (found != static_cast<std::size_t>(-1)) {
        if (slots_[buckets_[found].slot].query != query) {
            std::unique_ptr<DnstapMessage> other = take(found);
            if (query) emit_pair(std::move(next_), std::move(other));
            else emit_pair(std::move(other), std::move(next_));
            return;
        }
        // Same key on the same side while one is pending (retransmission, or a sender that
        // reuses ids fast): the older one goes out alone; the newer one waits.
        metrics_.duplicates.fetch_add(1, std::memory_order_relaxed);
        emit_alone(take(found), query);
    }
    const std::uint32_t s = new_slot();
    if (free_slots_.capacity() < slots_.size()) free_slots_.reserve(slots_.capacity());
    Slot& slot = slots_[s];
    slot.key = key;
    slot.message = std::move(next_);
    wait(s, query, now);
}

void Pairer::wait(std::uint32_t s, bool query, Clock::time_point now) {
    Slot& slot = slots_[s];
    slot.query = query;
    slot.arrived = now;
    slot.message_time_ns = slot.message->event_time_ns();
    WaitList& list = query ? waiting_queries_ : waiting_responses_;
    slot.prev = list.tail;
    slot.next = none;
    if (list.tail != none) slots_[list.tail].next = s; else list.head = s;
    list.tail = s;
    insert_bucket(s);
}

void Pairer::expire_side(WaitList& list, std::chrono::milliseconds timeout, Clock::time_point now, bool query) {
    const std::int64_t timeout_ns = std::chrono::nanoseconds(timeout).count();
    while (list.head != none) {
        const Slot& w = slots_[list.head];
        const bool by_wall_clock = now - w.arrived >= timeout;
        const bool by_message_time = w.message_time_ns > 0 && newest_message_ns_ - w.message_time_ns >= timeout_ns;
        if (!by_wall_clock && !by_message_time) break;
        const std::size_t bucket = find(w.key, *w.message);
        emit_alone(take(bucket), query);
    }
}

void Pairer::expire(Clock::time_point now) {
    coarse_uses_ = 0;  // the next add_next() reads the clock: no reading survives an idle spell
    expire_side(waiting_queries_, options_.query_timeout, now, true);
    expire_side(waiting_responses_, options_.response_grace, now, false);
}

void Pairer::flush_all() {
    for (WaitList* list : {&waiting_queries_, &waiting_responses_}) {
        const bool query = list == &waiting_queries_;
        while (list->head != none) {
            const Slot& w = slots_[list->head];
            emit_alone(take(find(w.key, *w.message)), query);
        }
    }
}

}  // namespace dnstap_collector
