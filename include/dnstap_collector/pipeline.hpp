// The worker pool: decode + pair. Ingest offers raw frames; each is routed by route_hash() to
// one worker's bounded queue, so one worker owns each pairing table. Workers hand finished
// exchanges to an ExchangeSink in batches.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dnstap_collector/ingest.hpp"
#include "dnstap_collector/pair.hpp"
#include "dnstap_collector/sinks.hpp"

namespace dnstap_collector {

class ExchangeSink;
struct Metrics;

// What leaves the collector about clients. Applied to each exchange once it is paired, so
// pairing sees the real addresses and a pair is kept or excluded as a whole (its kind is the
// query's: BIND answers an RD=1 AUTH_QUERY with a CLIENT_RESPONSE).
struct PrivacyOptions {
    int client_prefix_v4 = 32;     // keep this many bits of query_address (24: a /24)
    int client_prefix_v6 = 128;    // 56: a /56
    std::string hash_key;          // non-empty: replace query_address by HMAC-SHA256(key, address)
    std::vector<std::string> exclude_kinds;  // e.g. "client": no rows of that kind at all
    std::vector<std::string> exclude_names;  // names at or under these suffixes are not stored
    bool active() const noexcept {
        return client_prefix_v4 < 32 || client_prefix_v6 < 128 || !hash_key.empty() || !exclude_kinds.empty() ||
               !exclude_names.empty();
    }
};

// Applies the options; false when the exchange must not be stored (counted as filtered).
class Privacy {
public:
    explicit Privacy(PrivacyOptions options);
    bool apply(Exchange& e) const;
private:
    void protect(IpAddress& client) const;
    PrivacyOptions options_;
};

struct PipelineOptions {
    unsigned workers = 0;                 // 0: number of cores
    std::size_t queue_frames = 131'072;   // per pool, split across workers
    std::size_t queue_bytes = 64u << 20;  // and at most this many payload bytes (large frames)
    // Non-empty: frames that do not fit the queues wait in files here (one per worker) instead
    // of being dropped, up to overflow_max_bytes in all, and are processed once the workers
    // catch up. Files a previous run left are processed first.
    std::string overflow_dir;
    std::uint64_t overflow_max_bytes = 4ull << 30;
    // The worker threads' place on a shared host (the PostgreSQL sink gets the same).
    StoragePriority storage;
    PairOptions pairing;
    PrivacyOptions privacy;
    bool decode = true;                   // false: frames are counted as stored and discarded
                                          // (measures ingest alone, for benchmarks)
};

class WorkerPool : public FrameConsumer {
public:
    WorkerPool(PipelineOptions options, ExchangeSink& sink, Metrics& metrics);
    ~WorkerPool() override;
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    bool offer(std::span<const std::uint8_t> frame) override;
    // The frames of one read: copied into one buffer per worker, one lock per worker.
    void offer_all(std::span<const std::span<const std::uint8_t>> frames) override;
    // Like offer() but waits for room instead of dropping: for `import`, where the input is a
    // file and nobody must be kept from waiting. Frames are handed over in batches; a frame
    // may wait for company until drain_and_stop(). One waiting producer at a time.
    void push_wait(std::span<const std::uint8_t> frame);
    // Stops accepting, processes every frame queued in memory, flushes every pairing table.
    // Frames in overflow files stay there for the next start (Metrics::overflow_frames).
    void drain_and_stop();
    unsigned worker_count() const noexcept;
    std::size_t queued() const noexcept;  // in memory and in overflow files
    struct OverflowState {
        std::uint64_t bytes = 0;         // waiting in overflow files now
        std::uint64_t frames = 0;        // ... in so many frames
        std::uint64_t frames_total = 0;  // ever written to them (this run)
    };
    OverflowState overflow() const noexcept;
    void publish_overflow() const noexcept;  // into Metrics::overflow_bytes, overflow_frames, frames_overflowed

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace dnstap_collector
