// The worker pool: decode + pair. Ingest offers raw frames; each is routed by route_hash() to
// one worker's bounded queue, so one worker owns each pairing table. Workers hand finished
// exchanges to an ExchangeSink in batches.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "dnstap_collector/ingest.hpp"
#include "dnstap_collector/pair.hpp"

namespace dnstap_collector {

class ExchangeSink;
struct Metrics;

struct PipelineOptions {
    unsigned workers = 0;                 // 0: number of cores
    std::size_t queue_frames = 262'144;   // per pool, split across workers
    PairOptions pairing;
};

class WorkerPool : public FrameConsumer {
public:
    WorkerPool(PipelineOptions options, ExchangeSink& sink, Metrics& metrics);
    ~WorkerPool() override;
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    bool offer(std::span<const std::uint8_t> frame) override;
    // Like offer() but waits for room instead of dropping: for `import`, where the input is a
    // file and nobody must be kept from waiting.
    void push_wait(std::span<const std::uint8_t> frame);
    // Stops accepting, processes every queued frame, flushes every pairing table.
    void drain_and_stop();
    unsigned worker_count() const noexcept;
    std::size_t queued() const noexcept;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace dnstap_collector
