// Bounded queues between stages for raw frames. Producers never wait (push() takes what fits
// and the caller counts the rest) except push_wait(), for producers that may (import reads a
// file). The consumer takes everything at once and gives the spent buffers back.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

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

// One worker's input: batches bounded by frames and by payload bytes. Spent batches come back
// from the worker and are handed out again, so a steady stream allocates nothing.
class FrameBatchQueue {
public:
    FrameBatchQueue(std::size_t max_frames, std::size_t max_bytes) : max_frames_(max_frames), max_bytes_(max_bytes) {}

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

}  // namespace dnstap_collector
