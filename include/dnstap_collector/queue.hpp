// Bounded multi-producer queue between stages. Producers never wait: try_push fails when the
// queue is full and the caller counts the drop. The consumer takes everything at once.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <vector>

namespace dnstap_collector {

template <typename T>
class BoundedQueue {
public:
    explicit BoundedQueue(std::size_t capacity) : capacity_(capacity) { items_.reserve(1024); }

    bool try_push(T&& item) {
        bool was_empty;
        {
            std::lock_guard lock(mutex_);
            if (items_.size() >= capacity_ || closed_) return false;
            was_empty = items_.empty();
            items_.push_back(std::move(item));
        }
        // The consumer only sleeps on an empty queue, so only the first item needs to wake it:
        // one futex call per burst instead of one per frame.
        if (was_empty) ready_.notify_one();
        return true;
    }

    // For producers that may wait (import reads a file; nobody upstream is kept waiting).
    // False only once the queue is closed.
    bool push_wait(T&& item) {
        bool was_empty;
        {
            std::unique_lock lock(mutex_);
            room_.wait(lock, [&] { return items_.size() < capacity_ || closed_; });
            if (closed_) return false;
            was_empty = items_.empty();
            items_.push_back(std::move(item));
        }
        if (was_empty) ready_.notify_one();
        return true;
    }

    // Waits (for the consumer only) until items arrive, the timeout passes, or close().
    // Swaps the whole backlog into `out` (which should be empty). False once closed and empty.
    bool pop_all(std::vector<T>& out, std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        if (items_.empty() && !closed_) ready_.wait_for(lock, timeout, [&] { return !items_.empty() || closed_; });
        if (items_.empty()) return !closed_;
        out.swap(items_);
        lock.unlock();
        room_.notify_all();
        return true;
    }

    void close() {
        { std::lock_guard lock(mutex_); closed_ = true; }
        ready_.notify_all();
        room_.notify_all();
    }
    std::size_t size() const { std::lock_guard lock(mutex_); return items_.size(); }
    std::size_t capacity() const noexcept { return capacity_; }

private:
    mutable std::mutex mutex_;
    std::condition_variable ready_;
    std::condition_variable room_;
    std::vector<T> items_;
    std::size_t capacity_;
    bool closed_ = false;
};

}  // namespace dnstap_collector
