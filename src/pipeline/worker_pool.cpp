#include "dnstap_collector/pipeline.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "dnstap_collector/decode.hpp"
#include "dnstap_collector/log.hpp"
#include "dnstap_collector/metrics.hpp"
#include "dnstap_collector/sinks.hpp"

namespace dnstap_collector {

namespace {
constexpr std::size_t max_rows_per_handoff = 4096;
constexpr std::chrono::milliseconds idle_wakeup{100};  // expiry runs at least this often

// Frames back to back in one buffer: a read's worth of frames for one worker costs one
// hand-over instead of an allocation, a copy into its own vector and a lock each.
struct FrameBatch {
    std::vector<std::uint8_t> bytes;
    std::vector<std::uint32_t> ends;  // end offset of each frame in `bytes`

    std::size_t frames() const noexcept { return ends.size(); }
    bool empty() const noexcept { return ends.empty(); }
    std::span<const std::uint8_t> frame(std::size_t i) const noexcept {
        const std::size_t begin = i ? ends[i - 1] : 0;
        return {bytes.data() + begin, ends[i] - begin};
    }
    void add(std::span<const std::uint8_t> frame) {
        bytes.insert(bytes.end(), frame.begin(), frame.end());
        ends.push_back(static_cast<std::uint32_t>(bytes.size()));
    }
    std::size_t bytes_of_first(std::size_t n) const noexcept { return n ? ends[n - 1] : 0; }
    void truncate(std::size_t n) {
        bytes.resize(bytes_of_first(n));
        ends.resize(n);
    }
    void clear() noexcept {
        bytes.clear();
        ends.clear();
    }
};

// One worker's input: batches bounded by frames and by payload bytes. Spent batches come back
// from the worker and are handed out again, so a steady stream allocates nothing.
class FrameQueue {
public:
    FrameQueue(std::size_t max_frames, std::size_t max_bytes) : max_frames_(max_frames), max_bytes_(max_bytes) {}

    // Queues as many leading frames of `batch` as there is room for and returns how many;
    // `batch` comes back empty (a recycled buffer) whatever happened to its frames.
    std::size_t push(FrameBatch& batch) {
        std::size_t n = 0;
        bool was_empty = false;
        {
            std::lock_guard lock(mutex_);
            if (!closed_) {
                n = std::min(batch.frames(), max_frames_ - std::min(frames_, max_frames_));
                if (n > 0 && bytes_ + batch.bytes_of_first(n) > max_bytes_) n = fits_bytes(batch, n);
                if (n == 0 && items_.empty() && !batch.empty()) n = 1;  // one frame larger than the budget
                if (n > 0) {
                    batch.truncate(n);
                    was_empty = items_.empty();
                    frames_ += n;
                    bytes_ += batch.bytes.size();
                    items_.push_back(std::move(batch));
                    batch = take_spare();
                }
            }
        }
        batch.clear();
        if (was_empty) ready_.notify_one();  // the worker only sleeps on an empty queue
        return n;
    }

    // Waits for room for the whole batch (or an empty queue, for a batch larger than the
    // bounds). False once closed; `batch` comes back empty either way.
    bool push_wait(FrameBatch& batch) {
        bool was_empty;
        {
            std::unique_lock lock(mutex_);
            room_.wait(lock, [&] {
                return closed_ || items_.empty() ||
                       (frames_ + batch.frames() <= max_frames_ && bytes_ + batch.bytes.size() <= max_bytes_);
            });
            if (closed_) {
                batch.clear();
                return false;
            }
            was_empty = items_.empty();
            frames_ += batch.frames();
            bytes_ += batch.bytes.size();
            items_.push_back(std::move(batch));
            batch = take_spare();
        }
        batch.clear();
        if (was_empty) ready_.notify_one();
        return true;
    }

    // For the worker: returns the spent batches in `batches`, then waits until frames arrive,
    // the timeout passes or close(), and swaps the backlog in. False once closed and empty.
    bool pop_all(std::vector<FrameBatch>& batches, std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        for (auto& spent : batches)
            if (spares_.size() < max_spares && spent.bytes.capacity() <= max_spare_bytes) {
                spent.clear();
                spares_.push_back(std::move(spent));
            }
        batches.clear();
        if (items_.empty() && !closed_) ready_.wait_for(lock, timeout, [&] { return !items_.empty() || closed_; });
        if (items_.empty()) return !closed_;
        batches.swap(items_);
        frames_ = 0;
        bytes_ = 0;
        lock.unlock();
        room_.notify_all();
        return true;
    }

    void close() {
        { std::lock_guard lock(mutex_); closed_ = true; }
        ready_.notify_all();
        room_.notify_all();
    }
    std::size_t frames() const { std::lock_guard lock(mutex_); return frames_; }

private:
    // Enough spares for the batches in flight when the worker keeps up; a burst's extra
    // buffers, and unusually large ones, are freed.
    static constexpr std::size_t max_spares = 32;
    static constexpr std::size_t max_spare_bytes = 1u << 20;

    std::size_t fits_bytes(const FrameBatch& batch, std::size_t n) const noexcept {
        // Largest prefix shorter than n whose bytes fit (ends are increasing: binary search).
        const std::size_t room = max_bytes_ - std::min(bytes_, max_bytes_);
        std::size_t lo = 0, hi = n - 1;
        while (lo < hi) {
            const std::size_t mid = (lo + hi + 1) / 2;
            if (batch.bytes_of_first(mid) <= room) lo = mid; else hi = mid - 1;
        }
        return lo;
    }
    FrameBatch take_spare() {
        if (spares_.empty()) return {};
        FrameBatch b = std::move(spares_.back());
        spares_.pop_back();
        return b;
    }

    mutable std::mutex mutex_;
    std::condition_variable ready_;
    std::condition_variable room_;
    std::vector<FrameBatch> items_;
    std::vector<FrameBatch> spares_;
    std::size_t frames_ = 0, bytes_ = 0;
    const std::size_t max_frames_, max_bytes_;
    bool closed_ = false;
};

// A batch is handed over at the end of each offer_all(), or for push_wait() once it holds this much.
constexpr std::size_t wait_batch_frames = 256;
constexpr std::size_t wait_batch_bytes = 64 * 1024;
}  // namespace

struct WorkerPool::Impl {
    struct Worker {
        Worker(std::size_t frames, std::size_t bytes) : queue(frames, bytes) {}
        FrameQueue queue;
        FrameBatch staged;       // offer()/offer_all(), under offer_mutex
        FrameBatch wait_staged;  // push_wait(), under wait_mutex
        std::thread thread;
    };

    PipelineOptions options;
    ExchangeSink& sink;
    Metrics& metrics;
    std::vector<std::unique_ptr<Worker>> workers;
    std::mutex offer_mutex;  // one ingest thread in practice: uncontended
    std::mutex wait_mutex;
    std::atomic<bool> stopped{false};
    log::RateLimit decode_error_log;
    Privacy privacy;
    bool filtering;

    Impl(PipelineOptions o, ExchangeSink& s, Metrics& m)
        : options(o), sink(s), metrics(m), privacy(options.privacy), filtering(options.privacy.active()) {
        unsigned n = options.workers ? options.workers : std::max(1u, std::thread::hardware_concurrency());
        const std::size_t frames = std::max<std::size_t>(1, options.queue_frames / n);
        const std::size_t bytes = std::max<std::size_t>(1, options.queue_bytes / n);
        for (unsigned i = 0; i < n; ++i) workers.push_back(std::make_unique<Worker>(frames, bytes));
        for (auto& w : workers) w->thread = std::thread([this, worker = w.get()] { run(*worker); });
    }

    Worker& route(std::span<const std::uint8_t> frame) {
        if (workers.size() == 1) return *workers.front();
        return *workers[route_hash(frame) % workers.size()];
    }

    // Under offer_mutex: stage every frame with its worker, then one push per worker. Returns
    // how many were accepted.
    std::uint64_t offer_locked(std::span<const std::span<const std::uint8_t>> frames) {
        for (const auto frame : frames) route(frame).staged.add(frame);
        std::uint64_t accepted = 0, dropped = 0;
        for (auto& w : workers) {
            if (w->staged.empty()) continue;
            const std::size_t staged = w->staged.frames();
            const std::size_t taken = w->queue.push(w->staged);
            accepted += taken;
            dropped += staged - taken;
        }
        if (accepted) metrics.frames_accepted.fetch_add(accepted, std::memory_order_relaxed);
        if (dropped) metrics.drop(DropReason::queue_full, dropped);
        return accepted;
    }

    void hand_over_waiting(Worker& w) {
        const std::size_t n = w.wait_staged.frames();
        if (w.queue.push_wait(w.wait_staged))
            metrics.frames_accepted.fetch_add(n, std::memory_order_relaxed);
        else
            metrics.drop(DropReason::shutdown, n);  // pushed after drain_and_stop()
    }

    void flush_waiting() {
        std::lock_guard lock(wait_mutex);
        for (auto& w : workers)
            if (!w->wait_staged.empty()) hand_over_waiting(*w);
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

        std::vector<FrameBatch> batches;
        bool open = true;
        while (open) {
            open = worker.queue.pop_all(batches, idle_wakeup);
            if (options.decode) {
                for (const FrameBatch& batch : batches)
                    for (std::size_t i = 0; i < batch.frames(); ++i) process(batch.frame(i), pairer);
            } else {
                std::uint64_t n = 0;
                for (const FrameBatch& batch : batches) n += batch.frames();
                metrics.messages_stored.fetch_add(n, std::memory_order_relaxed);
            }
            pairer.expire();
            hand_off();
        }
        pairer.flush_all();
        hand_off();
    }

    void process(std::span<const std::uint8_t> frame, Pairer& pairer) {
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

WorkerPool::~WorkerPool() {
    impl_->flush_waiting();
    impl_->stop();
}

bool WorkerPool::offer(std::span<const std::uint8_t> frame) {
    std::lock_guard lock(impl_->offer_mutex);
    return impl_->offer_locked({&frame, 1}) == 1;
}

void WorkerPool::offer_all(std::span<const std::span<const std::uint8_t>> frames) {
    if (frames.empty()) return;
    std::lock_guard lock(impl_->offer_mutex);
    impl_->offer_locked(frames);
}

void WorkerPool::push_wait(std::span<const std::uint8_t> frame) {
    std::lock_guard lock(impl_->wait_mutex);
    auto& w = impl_->route(frame);
    w.wait_staged.add(frame);
    if (w.wait_staged.frames() >= wait_batch_frames || w.wait_staged.bytes.size() >= wait_batch_bytes ||
        impl_->stopped.load(std::memory_order_relaxed))
        impl_->hand_over_waiting(w);
}

void WorkerPool::drain_and_stop() {
    impl_->flush_waiting();
    impl_->stopped.store(true);
    impl_->stop();
}

unsigned WorkerPool::worker_count() const noexcept { return static_cast<unsigned>(impl_->workers.size()); }

std::size_t WorkerPool::queued() const noexcept {
    std::size_t n = 0;
    for (const auto& w : impl_->workers) n += w->queue.frames();
    return n;
}

}  // namespace dnstap_collector
