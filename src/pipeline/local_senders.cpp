#include "dnstap_collector/senders.hpp"

#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include "dnstap_collector/log.hpp"

namespace dnstap_collector {

LocalSenders::LocalSenders(std::filesystem::path proc) : proc_(std::move(proc)) {}

void LocalSenders::add(int pid) {
    if (pid <= 0) return;
    std::lock_guard lock(mu_);
    ++senders_[pid].connections;
}

void LocalSenders::remove(int pid) {
    std::lock_guard lock(mu_);
    const auto it = senders_.find(pid);
    if (it != senders_.end() && --it->second.connections <= 0) senders_.erase(it);
}

bool LocalSenders::empty() const {
    std::lock_guard lock(mu_);
    return senders_.empty();
}

std::int64_t LocalSenders::run_delay_ns(int pid) const {
    std::error_code ec;
    std::filesystem::directory_iterator tasks(proc_ / std::to_string(pid) / "task", ec);
    if (ec) return -1;
    std::int64_t total = 0;
    // Threads come and go: one that left between listing and reading is skipped, and its
    // past delay with it (the next sample then starts from a lower base; see below).
    for (const auto& task : tasks) {
        std::ifstream in(task.path() / "schedstat");
        long long run = 0, delay = 0;
        if (in >> run >> delay) total += delay;
    }
    return total;
}

double LocalSenders::cpu_wait_share(Clock::time_point now) {
    std::vector<int> pids;
    {
        std::lock_guard lock(mu_);
        for (const auto& [pid, s] : senders_) pids.push_back(pid);
    }
    std::vector<std::int64_t> delays;
    delays.reserve(pids.size());
    for (int pid : pids) delays.push_back(run_delay_ns(pid));

    std::lock_guard lock(mu_);
    const auto elapsed = std::chrono::duration<double>(now - last_sample_).count();
    const bool first = last_sample_ == Clock::time_point{};
    last_sample_ = now;
    double waited_s = 0;
    for (std::size_t i = 0; i < pids.size(); ++i) {
        const auto it = senders_.find(pids[i]);
        if (it == senders_.end()) continue;
        if (delays[i] < 0 && !it->second.unseen_logged) {
            it->second.unseen_logged = true;
            log::warning("storage_yield: cannot read " + (proc_ / std::to_string(pids[i]) / "task").string() +
                         " (the sender's threads): storage does not see this sender wait; is /proc hidden "
                         "(systemd ProtectProc=invisible, mount option hidepid)?");
        }
        // A thread that exited takes its delay along: a lower total starts a new count.
        if (it->second.last_delay_ns >= 0 && delays[i] >= it->second.last_delay_ns)
            waited_s += static_cast<double>(delays[i] - it->second.last_delay_ns) / 1e9;
        it->second.last_delay_ns = delays[i];
    }
    if (first || elapsed <= 0) return 0;
    return waited_s / elapsed;
}

}  // namespace dnstap_collector
