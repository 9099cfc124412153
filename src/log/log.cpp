#include "dnstap_collector/log.hpp"

#include <pthread.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace dnstap_collector::log {
namespace {
std::atomic<Level> current_level{Level::info};
std::mutex write_mutex;
// Under systemd, stderr goes to journald, which reads "<N>" as the syslog priority.
const bool to_journal = std::getenv("JOURNAL_STREAM") != nullptr;
const char* prefix(Level l) {
    switch (l) {
    case Level::debug: return to_journal ? "<7>debug: " : "debug: ";
    case Level::info: return to_journal ? "<6>" : "";
    case Level::warning: return to_journal ? "<4>warning: " : "warning: ";
    case Level::error: return to_journal ? "<3>error: " : "error: ";
    }
    return "";
}
}  // namespace

void name_thread(std::string_view name) noexcept {
    char buf[16] = {};
    name.copy(buf, sizeof buf - 1);
    pthread_setname_np(pthread_self(), buf);  // best effort: only ever cosmetic
}

void set_level(Level l) noexcept { current_level.store(l, std::memory_order_relaxed); }
Level level() noexcept { return current_level.load(std::memory_order_relaxed); }

void write(Level l, std::string_view message) {
    if (l < level()) return;
    std::string line = prefix(l);
    line.append(message);
    line.push_back('\n');
    std::lock_guard lock(write_mutex);
    std::fwrite(line.data(), 1, line.size(), stderr);
}

bool RateLimit::allow(std::uint64_t& suppressed) noexcept {
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    auto next = next_ns_.load(std::memory_order_relaxed);
    if (now >= next &&
        next_ns_.compare_exchange_strong(next, now + std::chrono::nanoseconds(interval_).count())) {
        suppressed = suppressed_.exchange(0);
        return true;
    }
    suppressed_.fetch_add(1, std::memory_order_relaxed);
    return false;
}

}  // namespace dnstap_collector::log
