// The local processes sending dnstap (Unix socket peers, by SO_PEERCRED) and how long their
// threads waited for a CPU lately: the signal storage yields to (storage_yield), since work
// deferred to overflow files costs named nothing, while a named waiting for a core loses
// queries.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>

namespace dnstap_collector {

class LocalSenders {
public:
    using Clock = std::chrono::steady_clock;

    // /proc, or a directory laid out like it (tests).
    explicit LocalSenders(std::filesystem::path proc = "/proc");

    // One call per connection; a pid with several connections stays until the last one goes.
    void add(int pid);
    void remove(int pid);
    bool empty() const;

    // Seconds the senders' threads spent runnable but not running, per second of wall time,
    // since the previous call (summed over threads: 0.5 is half a core's worth of waiting).
    // The first call after a sender appears only starts its count. A sender whose /proc entry
    // cannot be read (ProtectProc=invisible, hidepid) counts as not waiting, with a warning.
    double cpu_wait_share(Clock::time_point now = Clock::now());

    // Nanoseconds the threads of `pid` have waited for a CPU since they started (the second
    // field of /proc/PID/task/TID/schedstat, summed); -1 when the process is gone.
    std::int64_t run_delay_ns(int pid) const;

private:
    struct Sender {
        int connections = 0;
        std::int64_t last_delay_ns = -1;  // -1: not sampled yet
        bool unseen_logged = false;       // its /proc entry could not be read, said once
    };
    std::filesystem::path proc_;
    mutable std::mutex mu_;
    std::map<int, Sender> senders_;
    Clock::time_point last_sample_{};
};

}  // namespace dnstap_collector
