// FileSink: raw dnstap frames to a Frame Streams file, as fstrm_capture writes it (START with
// the content type, data frames, STOP), readable by fstrm_dump, dnstap-read and `import`.
//
// Differences from fstrm_capture, on purpose:
//  - a file is never truncated: fstrm_capture opens with O_TRUNC, so a restart or a SIGUSR1
//    with a fixed name destroys the previous capture. Here a name that exists gets a numeric
//    suffix (PATH.1, PATH.2, ...), so every file is one complete START ... STOP stream;
//  - split boundaries are aligned to the wall clock (split 3600 gives files starting on the
//    hour) and checked by a timer, not only when data arrives;
//  - files are created 0640: dnstap holds client addresses.
#include "dnstap_collector/sinks.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dnstap_collector/frame.hpp"
#include "dnstap_collector/log.hpp"
#include "dnstap_collector/metrics.hpp"
#include "dnstap_collector/queue.hpp"

namespace dnstap_collector {
namespace {

// Frames the file could not take: dropped messages when the file is the store, else only a
// gap in the copy (the database still has them), counted apart.
void lost(Metrics& metrics, bool file_is_the_store, std::uint64_t n = 1) {
    if (file_is_the_store) metrics.drop(DropReason::sink_full, n);
    else metrics.file_frames_dropped.fetch_add(n, std::memory_order_relaxed);
}

constexpr std::size_t queue_frames = 65'536;
constexpr std::size_t queue_bytes = 32u << 20;
constexpr std::size_t stdio_buffer = 256 * 1024;
constexpr auto flush_interval = std::chrono::seconds(1);
constexpr auto poll_interval = std::chrono::milliseconds(200);  // latency of rotate() and splits
constexpr int max_suffix = 1000;

struct FileCloser {
    void operator()(std::FILE* f) const noexcept { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

std::string errno_text(int err) { return std::strerror(err); }

bool write_all(std::FILE* f, const void* data, std::size_t n) { return n == 0 || std::fwrite(data, 1, n, f) == n; }

}  // namespace

struct FileSink::Impl {
    Impl(FileSinkOptions o, Metrics& m) : options(std::move(o)), metrics(m) {}

    FileSinkOptions options;
    Metrics& metrics;
    FrameBatchQueue queue{queue_frames, queue_bytes};
    std::mutex offer_mutex;
    FrameBatch staged;  // under offer_mutex
    std::thread thread;
    std::atomic<bool> running{false};
    std::atomic<bool> rotate_requested{false};

    // Writer state: touched by start() before the thread exists, then only by the thread.
    File file;
    std::string name;
    std::time_t next_split = 0;
    std::uint64_t frames_in_file = 0, bytes_in_file = 0;
    bool dirty = false;
    std::chrono::steady_clock::time_point last_flush{};
    log::RateLimit error_limit;

    std::tm calendar(std::time_t t) const {
        std::tm tm{};
        if (options.localtime) localtime_r(&t, &tm);
        else gmtime_r(&t, &tm);
        return tm;
    }

    std::string expand(std::time_t now) const {
        if (options.split_seconds <= 0) return options.path;
        const std::tm tm = calendar(now);
        std::string out(options.path.size() + 256, '\0');
        const std::size_t n = std::strftime(out.data(), out.size(), options.path.c_str(), &tm);
        if (n == 0) throw std::runtime_error("file sink: strftime gives an empty name for " + options.path);
        out.resize(n);
        return out;
    }

    // The next multiple of split_seconds on the wall clock of the chosen zone.
    std::time_t split_after(std::time_t now) const {
        const long split = options.split_seconds;
        const long offset = options.localtime ? calendar(now).tm_gmtoff : 0;
        const long wall = static_cast<long>(now) + offset;
        return static_cast<std::time_t>((wall / split + 1) * split - offset);
    }

    void open_next(std::time_t now) {
        const std::string base = expand(now);
        int fd = -1;
        std::string candidate = base;
        for (int suffix = 1; suffix <= max_suffix; ++suffix) {
            fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
            if (fd >= 0 || errno != EEXIST) break;
            candidate = base + "." + std::to_string(suffix);
        }
        if (fd < 0) throw std::runtime_error("file sink: cannot create " + candidate + ": " + errno_text(errno));
        File f(::fdopen(fd, "w"));
        if (!f) {
            const int err = errno;
            ::close(fd);
            throw std::runtime_error("file sink: fdopen " + candidate + ": " + errno_text(err));
        }
        std::setvbuf(f.get(), nullptr, _IOFBF, stdio_buffer);
        const auto start = encode_control(ControlType::start);
        // Readers see the content type as soon as the file exists.
        if (!write_all(f.get(), start.data(), start.size()) || std::fflush(f.get()) != 0)
            throw std::runtime_error("file sink: cannot write " + candidate + ": " + errno_text(errno));
        file = std::move(f);
        name = candidate;
        frames_in_file = bytes_in_file = 0;
        dirty = false;
        last_flush = std::chrono::steady_clock::now();
        if (options.split_seconds > 0) next_split = split_after(now);
        log::info("file sink: writing " + name);
    }

    void finish() {
        if (!file) return;
        const auto stop = encode_control(ControlType::stop);
        bool ok = write_all(file.get(), stop.data(), stop.size());
        ok = std::fflush(file.get()) == 0 && ok;
        const int err = errno;
        ok = std::fclose(file.release()) == 0 && ok;
        if (!ok) log::error("file sink: error finishing " + name + ": " + errno_text(err));
        log::info("file sink: closed " + name + " (" + std::to_string(frames_in_file) + " frames, " +
                  std::to_string(bytes_in_file) + " bytes)");
    }

    void report_error(const std::string& what) {
        std::uint64_t suppressed = 0;
        if (!error_limit.allow(suppressed)) return;
        log::error("file sink: " + what +
                   (suppressed ? " (" + std::to_string(suppressed) + " similar errors suppressed)" : ""));
    }

    // Finishes the current file and starts the next; on failure frames are dropped until a
    // later attempt (every poll) succeeds.
    void roll(std::time_t now) {
        finish();
        try {
            open_next(now);
        } catch (const std::exception& e) {
            report_error(e.what());
        }
    }

    void write_frame(std::span<const std::uint8_t> frame) {
        if (!file) {
            lost(metrics, options.is_store);
            return;
        }
        const std::uint8_t prefix[4] = {
            static_cast<std::uint8_t>(frame.size() >> 24), static_cast<std::uint8_t>(frame.size() >> 16),
            static_cast<std::uint8_t>(frame.size() >> 8), static_cast<std::uint8_t>(frame.size())};
        if (!write_all(file.get(), prefix, sizeof prefix) || !write_all(file.get(), frame.data(), frame.size())) {
            report_error("write to " + name + " failed: " + errno_text(errno));
            std::clearerr(file.get());
            lost(metrics, options.is_store);
            return;
        }
        if (options.is_store) metrics.messages_stored.fetch_add(1, std::memory_order_relaxed);
        ++frames_in_file;
        bytes_in_file += frame.size();
        dirty = true;
    }

    void flush() {
        last_flush = std::chrono::steady_clock::now();
        if (!file || !dirty) return;
        dirty = false;
        if (std::fflush(file.get()) != 0) {
            report_error("flush of " + name + " failed: " + errno_text(errno));
            std::clearerr(file.get());
        }
    }

    void run() {
        std::vector<FrameBatch> batches;
        for (;;) {
            const bool open = queue.pop_all(batches, poll_interval);
            for (const auto& batch : batches)
                for (std::size_t i = 0; i < batch.frames(); ++i) write_frame(batch.frame(i));

            const std::time_t now = std::time(nullptr);
            if (rotate_requested.exchange(false)) roll(now);
            else if (options.split_seconds > 0 && now >= next_split) roll(now);
            else if (!file) roll(now);  // retry after a failed open

            if (batches.empty() || std::chrono::steady_clock::now() - last_flush >= flush_interval) flush();
            if (!open) break;
        }
        finish();
    }
};

FileSink::FileSink(FileSinkOptions options, Metrics& metrics)
    : impl_(std::make_unique<Impl>(std::move(options), metrics)) {}

FileSink::~FileSink() { stop(); }

void FileSink::start() {
    if (impl_->running.load() || impl_->thread.joinable()) return;
    if (impl_->options.path.empty()) throw std::runtime_error("file sink: no path");
    impl_->open_next(std::time(nullptr));  // fail now, at startup, on a bad path
    impl_->running.store(true);
    impl_->thread = std::thread([impl = impl_.get()] {
        log::name_thread("file-writer");
        try {
            impl->run();
        } catch (const std::exception& e) {
            log::error(std::string("file sink: writer thread stopped: ") + e.what());
            impl->running.store(false);
        }
    });
}

bool FileSink::offer(std::span<const std::uint8_t> frame) { return offer_all({&frame, 1}) == 1; }

std::size_t FileSink::offer_all(std::span<const std::span<const std::uint8_t>> frames) {
    if (!impl_->running.load(std::memory_order_relaxed)) {
        lost(impl_->metrics, impl_->options.is_store, frames.size());
        return 0;
    }
    std::size_t taken = 0;
    {
        std::lock_guard lock(impl_->offer_mutex);
        for (const auto frame : frames)
            if (!frame.empty()) impl_->staged.add(frame);  // length 0 is the control escape
        if (!impl_->staged.empty()) taken = impl_->queue.push(impl_->staged);
    }
    if (taken < frames.size()) lost(impl_->metrics, impl_->options.is_store, frames.size() - taken);
    return taken;
}

void FileSink::rotate() { impl_->rotate_requested.store(true); }

// Log rotation tools move the file away: finishing it (STOP goes into the moved file) and
// opening the configured name again is exactly a rotation.
void FileSink::reopen() { impl_->rotate_requested.store(true); }

void FileSink::stop() {
    if (!impl_ || !impl_->thread.joinable()) return;
    impl_->running.store(false);
    impl_->queue.close();
    impl_->thread.join();
}

}  // namespace dnstap_collector
