// Bounded queues between stages for raw frames. Producers never wait (push() takes what fits
// and the caller counts the rest) except push_wait(), for producers that may (import reads a
// file). The consumer takes everything at once and gives the spent buffers back. A queue may
// have an overflow file: what does not fit in memory goes there, in order, instead of being
// dropped, and is read back once the consumer has caught up with the memory part.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dnstap_collector/frame.hpp"
#include "dnstap_collector/log.hpp"

namespace dnstap_collector {

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

// Frames on disk, first in first out: 4-byte big-endian length + frame after a Frame Streams
// START frame, so a file left behind is a capture `dnstap-collector import` reads. One
// producer appends (under the owning queue's lock); one consumer reads up to an offset it
// took under that lock. A file an earlier run left is taken up from where that run had read
// it (saved beside it after each read) to its last whole frame.
class OverflowFile {
public:
    OverflowFile(std::filesystem::path path, std::uint64_t max_bytes);  // throws std::system_error
    ~OverflowFile();
    OverflowFile(const OverflowFile&) = delete;
    OverflowFile& operator=(const OverflowFile&) = delete;

    // Appends frames [first, end) of `batch` while they fit max_bytes; returns how many. 0 as
    // well when the write fails (logged, rate-limited): the caller counts those frames.
    std::size_t append(const FrameBatch& batch, std::size_t first);
    // Adds frames from the read position up to `upto` (a write_offset() taken under the lock)
    // to `out` until it holds about max_bytes; returns how many.
    std::size_t read(FrameBatch& out, std::uint64_t upto, std::size_t max_bytes);
    std::uint64_t write_offset() const noexcept { return write_off_; }
    std::uint64_t read_offset() const noexcept { return read_off_; }  // the consumer's thread only
    bool caught_up(std::uint64_t upto) const noexcept { return read_off_ >= upto; }
    // Everything read: start over at the beginning (keeps the file small).
    void reset();
    // Frames found in the file at start, left by an earlier run.
    std::uint64_t restored_frames() const noexcept { return restored_frames_; }
    const std::filesystem::path& path() const noexcept { return path_; }

private:
    static constexpr std::size_t chunk_bytes = 1u << 20;
    // The largest --max-frame-size ingest accepts: a longer length is damage.
    static constexpr std::size_t max_frame = std::size_t{1} << 30;
    std::pair<std::uint64_t, std::uint64_t> count_frames() const;  // whole frames, and where they end
    std::size_t read_frames(FrameBatch& out, std::uint64_t upto, std::size_t max_bytes);
    FrameReader started_reader() const;
    void restart_reader(std::uint64_t at);
    bool feed_chunk(FrameReader& reader, std::uint64_t& fed, std::uint64_t upto) const;
    void skip_rest(std::uint64_t upto, const std::string& why);
    void save_read_offset() noexcept;
    void open_or_take_up();

    std::filesystem::path path_;
    std::uint64_t max_bytes_;
    std::vector<std::uint8_t> header_;
    int fd_ = -1;
    int offset_fd_ = -1;  // <file>.read: the read position, so a restart does not hand out frames twice
    std::uint64_t read_off_ = 0, write_off_ = 0;
    std::uint64_t restored_frames_ = 0;
    std::vector<std::uint8_t> scratch_;  // producer: the frames of one append
    FrameReader reader_{max_frame};      // consumer: parses what was fed up to fed_off_
    std::uint64_t fed_off_ = 0;
    log::RateLimit write_log_{std::chrono::seconds(10)};
};

// One worker's input: batches bounded by frames and by payload bytes. Spent batches come back
// from the worker and are handed out again, so a steady stream allocates nothing.
class FrameBatchQueue {
public:
    FrameBatchQueue(std::size_t max_frames, std::size_t max_bytes) : max_frames_(max_frames), max_bytes_(max_bytes) {}

    // Spill what does not fit in memory to `file` instead of refusing it.
    void set_overflow(std::unique_ptr<OverflowFile> file) {
        std::lock_guard lock(mutex_);
        overflow_ = std::move(file);
        spilled_frames_ = overflow_->restored_frames();
        overflow_read_ = overflow_->read_offset();
        spilling_ = !overflow_->caught_up(overflow_->write_offset());
    }

    // Queues as many leading frames of `batch` as there is room for (in memory, then in the
    // overflow file) and returns how many; `batch` comes back empty (a recycled buffer)
    // whatever happened to its frames.
    std::size_t push(FrameBatch& batch) {
        std::size_t n = 0;
        bool was_empty = false;
        {
            std::lock_guard lock(mutex_);
            if (!closed_) {
                if (!spilling_) {
                    n = std::min(batch.frames(), max_frames_ - std::min(frames_, max_frames_));
                    if (n > 0 && bytes_ + batch.bytes_of_first(n) > max_bytes_) n = fits_bytes(batch, n);
                    if (n == 0 && items_.empty() && !batch.empty()) n = 1;  // one frame larger than the budget
                }
                // Once frames are in the file, later ones follow them there: order is kept.
                std::size_t spilled = 0;
                if (overflow_ && n < batch.frames()) {
                    spilled = overflow_->append(batch, n);
                    if (spilled) {
                        spilling_ = true;
                        spilled_frames_ += spilled;
                        total_spilled_ += spilled;
                        was_empty = items_.empty();
                    }
                }
                if (n > 0) {
                    batch.truncate(n);
                    was_empty = was_empty || items_.empty() || gathered_now(n, batch.bytes.size());
                    frames_ += n;
                    bytes_ += batch.bytes.size();
                    items_.push_back(std::move(batch));
                    batch = take_spare();
                }
                n += spilled;
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
            if (spilling_) {  // behind frames already in the file: join them there
                const std::size_t n = overflow_->append(batch, 0);
                spilled_frames_ += n;
                total_spilled_ += n;
                const bool all = n == batch.frames();
                batch.clear();
                return all;
            }
            was_empty = items_.empty() || gathered_now(batch.frames(), batch.bytes.size());
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
    // the timeout passes or close(), and swaps the backlog in (frames in memory first, then a
    // slice of the overflow file). False once closed and memory is empty: frames still in the
    // overflow file are left there (OverflowFile takes them up at the next start).
    //
    // With a Gather, a wake-up that finds less than its frames or bytes waits up to its time
    // for more: every wake-up of the worker costs it caches the other processes of a busy
    // host evicted meanwhile, and a sender flushing small writes (named's default 8 KiB)
    // would otherwise wake it for a few dozen frames each time.
    struct Gather {
        std::size_t frames = 0, bytes = 0;
        std::chrono::milliseconds time{0};
    };
    bool pop_all(std::vector<FrameBatch>& batches, std::chrono::milliseconds timeout) {
        return pop_all(batches, timeout, Gather{});
    }
    bool pop_all(std::vector<FrameBatch>& batches, std::chrono::milliseconds timeout, Gather gather) {
        std::unique_lock lock(mutex_);
        for (auto& spent : batches)
            if (spares_.size() < max_spares && spent.bytes.capacity() <= max_spare_bytes) {
                spent.clear();
                spares_.push_back(std::move(spent));
            }
        batches.clear();
        if (items_.empty() && !spilling_ && !closed_)
            ready_.wait_for(lock, timeout, [&] { return !items_.empty() || spilling_ || closed_; });
        if (gather.time.count() > 0 && !items_.empty() && !spilling_ && !closed_) {
            // Never so much that pushes would find the queue full meanwhile.
            gather_ = {std::min(gather.frames, max_frames_ / 2), std::min(gather.bytes, max_bytes_ / 2), gather.time};
            ready_.wait_for(lock, gather.time, [&] { return gathered() || spilling_ || closed_; });
            gather_ = Gather{};
        }
        if (!items_.empty()) {
            batches.swap(items_);
            frames_ = 0;
            bytes_ = 0;
            lock.unlock();
            room_.notify_all();
            return true;
        }
        // Once closed, what is on disk stays there for the next start: a shutdown does not wait
        // for a backlog that may be gigabytes.
        if (!spilling_ || closed_) return !closed_;
        // Memory is empty and the rest is on disk: read a slice without holding the lock (the
        // producer appends behind `upto`).
        const std::uint64_t upto = overflow_->write_offset();
        FrameBatch slice = take_spare();
        lock.unlock();
        // Slices small enough to be kept as spares: reading back allocates nothing either.
        const std::size_t n = overflow_->read(slice, upto, std::min(max_bytes_ / 2 + 1, max_spare_bytes - 64 * 1024));
        lock.lock();
        spilled_frames_ -= std::min<std::uint64_t>(spilled_frames_, n);
        if (overflow_->caught_up(overflow_->write_offset())) {
            overflow_->reset();
            spilling_ = false;
            spilled_frames_ = 0;
        }
        overflow_read_ = overflow_->read_offset();
        if (!slice.empty()) batches.push_back(std::move(slice));
        return true;
    }

    void close() {
        { std::lock_guard lock(mutex_); closed_ = true; }
        ready_.notify_all();
        room_.notify_all();
    }
    // Frames waiting, in memory and in the overflow file.
    std::size_t frames() const { std::lock_guard lock(mutex_); return frames_ + spilled_frames_; }
    std::uint64_t overflow_frames() const { std::lock_guard lock(mutex_); return spilled_frames_; }
    std::uint64_t overflow_bytes() const {
        std::lock_guard lock(mutex_);
        return overflow_ ? overflow_->write_offset() - overflow_read_ : 0;
    }
    std::uint64_t spilled_total() const { std::lock_guard lock(mutex_); return total_spilled_; }

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
    bool gathered() const noexcept { return frames_ >= gather_.frames || bytes_ >= gather_.bytes; }
    // Whether adding this many frames and bytes completes what the worker gathers for (it
    // then waits for a notify that an empty queue alone would not send).
    bool gathered_now(std::size_t frames, std::size_t bytes) const noexcept {
        return gather_.time.count() > 0 && !gathered() &&
               (frames_ + frames >= gather_.frames || bytes_ + bytes >= gather_.bytes);
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
    Gather gather_;  // while the worker waits for a fuller batch
    std::unique_ptr<OverflowFile> overflow_;
    bool spilling_ = false;             // frames are in the file: new ones go there too
    std::uint64_t spilled_frames_ = 0;  // frames in the file not yet read
    std::uint64_t total_spilled_ = 0;
    std::uint64_t overflow_read_ = 0;   // the file's read offset as of the consumer's last slice
};

}  // namespace dnstap_collector
