// The logger, the one global: one line per event to stderr (journald adds the time).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string_view>

namespace dnstap_collector::log {

enum class Level { debug = 0, info, warning, error };

void set_level(Level level) noexcept;
Level level() noexcept;
void write(Level level, std::string_view message);

inline void debug(std::string_view m) { if (level() <= Level::debug) write(Level::debug, m); }
inline void info(std::string_view m) { write(Level::info, m); }
inline void warning(std::string_view m) { write(Level::warning, m); }
inline void error(std::string_view m) { write(Level::error, m); }

// Names the calling thread as top -H, ps -L and perf show it (at most 15 bytes are kept), so
// an operator can tell ingest, workers and writers apart. Not for the main thread: its name
// is the process name that pidof and pkill match.
void name_thread(std::string_view name) noexcept;

// At most one line per interval for a recurring event; tells how many were suppressed.
class RateLimit {
public:
    explicit RateLimit(std::chrono::seconds interval = std::chrono::seconds(10)) : interval_(interval) {}
    // True when this occurrence should be logged; `suppressed` gets the count held back since.
    bool allow(std::uint64_t& suppressed) noexcept;
private:
    std::chrono::seconds interval_;
    std::atomic<std::int64_t> next_ns_{0};
    std::atomic<std::uint64_t> suppressed_{0};
};

}  // namespace dnstap_collector::log
