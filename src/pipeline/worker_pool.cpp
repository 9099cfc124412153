#include "dnstap_collector/pipeline.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dnstap_collector/decode.hpp"
#include "dnstap_collector/log.hpp"
#include "dnstap_collector/metrics.hpp"
#include "dnstap_collector/queue.hpp"
#include "dnstap_collector/sinks.hpp"

namespace dnstap_collector {

namespace {

// One worker per CPU this process may run on, less one: ingest, the database writer and
// the DNS server next to us need a core too, and on a small host a second worker only adds
// routing (a protobuf scan per frame at ingest) and contention. At least one.
unsigned default_workers() {
    cpu_set_t set;
    CPU_ZERO(&set);
    int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
    if (cpus <= 0) cpus = static_cast<int>(std::thread::hardware_concurrency());
    return static_cast<unsigned>(std::max(1, cpus - 1));
}
constexpr std::size_t max_rows_per_handoff = 4096;
// When the sink only reads the exchanges (PostgreSQL), the worker decodes into them again
// after each hand-off: 48 exchanges (96 messages with their names and answers, ~100 KiB)
// are still in the core's cache when named and PostgreSQL share it. Measured next to named
// under dnsperf: the worker's CPU per frame 1.1-1.3 s per million with 48, 1.2-1.35 with
// 128, 1.55-2.2 with 512; 16 costs more again (1.5-1.6, and the writer a third more).
constexpr std::size_t rows_per_handoff_in_cache = 48;
constexpr std::chrono::milliseconds idle_wakeup{100};  // expiry runs at least this often
// A wake-up that finds fewer frames waits this long at most for more (see pop_all): 50 ms
// more on the way to the database, a fifth less CPU per frame next to a busy named that
// flushes small writes (docs/benchmarks.md).
constexpr FrameBatchQueue::Gather gather{8192, 1024 * 1024, std::chrono::milliseconds(50)};

// A batch is handed over at the end of each offer_all(), or for push_wait() once it holds this much.
constexpr std::size_t wait_batch_frames = 256;
constexpr std::size_t wait_batch_bytes = 64 * 1024;
}  // namespace

struct WorkerPool::Impl {
    struct Worker {
        Worker(std::size_t frames, std::size_t bytes) : queue(frames, bytes) {}
        FrameBatchQueue queue;
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
    struct LockFile {
        int fd = -1;
        ~LockFile() { if (fd >= 0) ::close(fd); }
    } overflow_lock;  // flock'd while this pool owns the overflow directory

    Impl(PipelineOptions o, ExchangeSink& s, Metrics& m)
        : options(o), sink(s), metrics(m), privacy(options.privacy), filtering(options.privacy.active()) {
        unsigned n = options.workers ? options.workers : default_workers();
        const std::size_t frames = std::max<std::size_t>(1, options.queue_frames / n);
        const std::size_t bytes = std::max<std::size_t>(1, options.queue_bytes / n);
        for (unsigned i = 0; i < n; ++i) workers.push_back(std::make_unique<Worker>(frames, bytes));
        if (!options.overflow_dir.empty()) open_overflow(n);
        for (unsigned i = 0; i < n; ++i)
            workers[i]->thread = std::thread([this, i, worker = workers[i].get()] {
                log::name_thread("worker-" + std::to_string(i));
                run(*worker);
            });
    }

    // One file per worker, so each keeps its frames in order. Files from a run with more
    // workers are handed to the workers here (their frames are routed again).
    void open_overflow(unsigned n) {
        namespace fs = std::filesystem;
        const fs::path dir(options.overflow_dir);
        fs::create_directories(dir);
        // Two collectors appending to the same files would mix their frames.
        overflow_lock.fd = ::open((dir / "lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
        if (overflow_lock.fd < 0)
            throw std::runtime_error("overflow directory " + dir.string() + ": cannot open its lock file: " + std::strerror(errno));
        if (::flock(overflow_lock.fd, LOCK_EX | LOCK_NB) != 0)
            throw std::runtime_error("overflow directory " + dir.string() + " is in use by another collector");
        auto name = [](unsigned i) { return "worker-" + std::to_string(i) + ".fstrm"; };
        std::uint64_t restored = 0;
        for (unsigned i = 0; i < n; ++i) {
            auto file = std::make_unique<OverflowFile>(dir / name(i), options.overflow_max_bytes / n);
            restored += file->restored_frames();
            workers[i]->queue.set_overflow(std::move(file));
        }
        for (unsigned i = n;; ++i) {
            const fs::path path = dir / name(i);
            std::error_code ec;
            if (!fs::exists(path, ec)) break;
            {
                OverflowFile old(path, options.overflow_max_bytes);
                FrameBatch slice;
                const std::uint64_t end = old.write_offset();
                while (old.read(slice, end, 1u << 20) > 0) {
                    restored += slice.frames();
                    std::vector<std::span<const std::uint8_t>> frames;
                    for (std::size_t f = 0; f < slice.frames(); ++f) frames.push_back(slice.frame(f));
                    offer_locked(frames);
                    slice.clear();
                }
            }
            fs::remove(path, ec);
            fs::remove(path.string() + ".read", ec);
        }
        if (restored) metrics.frames_restored.fetch_add(restored, std::memory_order_relaxed);
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
        // queue_full: not even the overflow file took them (full, or failing).
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
        options.storage.apply_to_this_thread("a decode worker");
        std::vector<Exchange> out;
        out.reserve(max_rows_per_handoff);
        Pairer* recycler = nullptr;
        std::size_t handoff_rows = max_rows_per_handoff;
        auto hand_off = [&] {
            if (out.empty()) return;
            sink.consume(std::move(out));
            // What the sink left in place (it only read the batch) is decoded into again;
            // then small hand-offs keep that storage in cache until it is reused.
            handoff_rows = out.empty() ? max_rows_per_handoff : rows_per_handoff_in_cache;
            if (recycler != nullptr) recycler->recycle(out); else out.clear();
            out.reserve(max_rows_per_handoff);
        };
        // The pairer builds each exchange at the end of `out`.
        Pairer pairer(options.pairing, metrics, out, [&] {
            if (filtering && !privacy.apply(out.back())) {
                metrics.drop(DropReason::filtered, out.back().message_count());
                out.pop_back();
                return;
            }
            if (out.size() >= handoff_rows) hand_off();
        });
        recycler = &pairer;

        std::vector<FrameBatch> batches;
        bool open = true;
        while (open) {
            open = worker.queue.pop_all(batches, idle_wakeup, gather);
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
        DnstapMessage& message = pairer.next();  // reused storage, kept until add_next()
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
        pairer.add_next();
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
    publish_overflow();
}

void WorkerPool::publish_overflow() const noexcept {
    const OverflowState state = overflow();
    impl_->metrics.overflow_bytes.store(state.bytes, std::memory_order_relaxed);
    impl_->metrics.overflow_frames.store(state.frames, std::memory_order_relaxed);
    impl_->metrics.frames_overflowed.store(state.frames_total, std::memory_order_relaxed);
}

unsigned WorkerPool::worker_count() const noexcept { return static_cast<unsigned>(impl_->workers.size()); }

std::size_t WorkerPool::queued() const noexcept {
    std::size_t n = 0;
    for (const auto& w : impl_->workers) n += w->queue.frames();
    return n;
}

WorkerPool::OverflowState WorkerPool::overflow() const noexcept {
    OverflowState state;
    for (const auto& w : impl_->workers) {
        state.bytes += w->queue.overflow_bytes();
        state.frames += w->queue.overflow_frames();
        state.frames_total += w->queue.spilled_total();
    }
    return state;
}

}  // namespace dnstap_collector
