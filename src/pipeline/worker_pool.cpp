#include "dnstap_collector/pipeline.hpp"

#include <atomic>
#include <thread>
#include <vector>

#include "dnstap_collector/decode.hpp"
#include "dnstap_collector/log.hpp"
#include "dnstap_collector/metrics.hpp"
#include "dnstap_collector/queue.hpp"
#include "dnstap_collector/sinks.hpp"

namespace dnstap_collector {

namespace {
using Frame = std::vector<std::uint8_t>;
constexpr std::size_t max_rows_per_handoff = 4096;
constexpr std::chrono::milliseconds idle_wakeup{100};  // expiry runs at least this often
}  // namespace

struct WorkerPool::Impl {
    struct Worker {
        explicit Worker(std::size_t capacity) : queue(capacity) {}
        BoundedQueue<Frame> queue;
        std::thread thread;
    };

    PipelineOptions options;
    ExchangeSink& sink;
    Metrics& metrics;
    std::vector<std::unique_ptr<Worker>> workers;
    log::RateLimit decode_error_log;
    Privacy privacy;
    bool filtering;

    Impl(PipelineOptions o, ExchangeSink& s, Metrics& m)
        : options(o), sink(s), metrics(m), privacy(options.privacy), filtering(options.privacy.active()) {
        unsigned n = options.workers ? options.workers : std::max(1u, std::thread::hardware_concurrency());
        const std::size_t per_worker = std::max<std::size_t>(1, options.queue_frames / n);
        for (unsigned i = 0; i < n; ++i) workers.push_back(std::make_unique<Worker>(per_worker));
        for (auto& w : workers) w->thread = std::thread([this, worker = w.get()] { run(*worker); });
    }

    Worker& route(std::span<const std::uint8_t> frame) {
        return *workers[route_hash(frame) % workers.size()];
    }

    void run(Worker& worker) {
        std::vector<Exchange> out;
        out.reserve(max_rows_per_handoff);
        auto hand_off = [&] {
            if (out.empty()) return;
            sink.consume(std::move(out));
            out.clear();
            out.reserve(max_rows_per_handoff);
        };
        Pairer pairer(options.pairing, metrics, [&](Exchange&& e) {
            if (filtering && !privacy.apply(e)) {
                metrics.drop(DropReason::filtered, e.message_count());
                return;
            }
            out.push_back(std::move(e));
            if (out.size() >= max_rows_per_handoff) hand_off();
        });

        std::vector<Frame> batch;
        bool open = true;
        while (open) {
            open = worker.queue.pop_all(batch, idle_wakeup);
            for (const Frame& frame : batch) process(frame, pairer);
            batch.clear();
            pairer.expire();
            hand_off();
        }
        pairer.flush_all();
        hand_off();
    }

    void process(const Frame& frame, Pairer& pairer) {
        if (!options.decode) {
            metrics.messages_stored.fetch_add(1, std::memory_order_relaxed);
            return;
        }
        DnstapMessage message;
        switch (decode_dnstap(frame, message)) {
        case DecodeStatus::bad_protobuf:
        case DecodeStatus::not_message: {
            metrics.drop(DropReason::decode_error);
            std::uint64_t suppressed = 0;
            if (decode_error_log.allow(suppressed))
                log::warning("dropped a frame that is not a dnstap message (" + std::to_string(frame.size()) +
                             " bytes; " + std::to_string(suppressed) + " more since the last report)");
            return;
        }
        case DecodeStatus::dns_error:
            metrics.dns_parse_errors.fetch_add(1, std::memory_order_relaxed);
            break;
        case DecodeStatus::ok:
            break;
        }
        metrics.messages_decoded.fetch_add(1, std::memory_order_relaxed);
        pairer.add(std::move(message));
    }

    void stop() {
        for (auto& w : workers) w->queue.close();
        for (auto& w : workers)
            if (w->thread.joinable()) w->thread.join();
    }
};

WorkerPool::WorkerPool(PipelineOptions options, ExchangeSink& sink, Metrics& metrics)
    : impl_(std::make_unique<Impl>(options, sink, metrics)) {}

WorkerPool::~WorkerPool() { impl_->stop(); }

bool WorkerPool::offer(std::span<const std::uint8_t> frame) {
    if (impl_->route(frame).queue.try_push(Frame(frame.begin(), frame.end()))) {
        impl_->metrics.frames_accepted.fetch_add(1, std::memory_order_relaxed);
        return true;
    }
    impl_->metrics.drop(DropReason::queue_full);
    return false;
}

void WorkerPool::push_wait(std::span<const std::uint8_t> frame) {
    if (impl_->route(frame).queue.push_wait(Frame(frame.begin(), frame.end())))
        impl_->metrics.frames_accepted.fetch_add(1, std::memory_order_relaxed);
    else
        impl_->metrics.drop(DropReason::shutdown);  // pushed after drain_and_stop()
}

void WorkerPool::drain_and_stop() { impl_->stop(); }

unsigned WorkerPool::worker_count() const noexcept { return static_cast<unsigned>(impl_->workers.size()); }

std::size_t WorkerPool::queued() const noexcept {
    std::size_t n = 0;
    for (const auto& w : impl_->workers) n += w->queue.size();
    return n;
}

}  // namespace dnstap_collector
