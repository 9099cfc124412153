// dnstap.exchange partitions: one per day (exchange_pYYYYMMDD) or hour (exchange_pYYYYMMDDHH),
// created ahead of time, on demand for rows of periods not known to exist (imports of old
// captures), and detached + dropped after the retention period.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>

#include "dnstap_collector/sinks.hpp"
#include "sinks/pg.hpp"

namespace dnstap_collector {

// Start of the period holding `unix_seconds` (UTC), and the start of the next one.
std::int64_t period_start(std::int64_t unix_seconds, PartitionWidth width) noexcept;
std::int64_t period_end(std::int64_t start, PartitionWidth width) noexcept;
std::string partition_name(std::int64_t start, PartitionWidth width);  // "exchange_p20240131"
// Inverse of partition_name for either width: {start, end}; nullopt for other names.
std::optional<std::pair<std::int64_t, std::int64_t>> parse_partition_name(std::string_view name);
// "2024-01-31 00:00:00+00"
std::string utc_literal(std::int64_t unix_seconds);

class PartitionManager {
public:
    PartitionManager(PartitionWidth width, int ahead, int retention_days)
        : width_(width), ahead_(ahead), retention_days_(retention_days) {}

    // Creates what is missing for these row times (unix microseconds).
    void ensure_rows(pg::Connection& c, std::span<const std::int64_t> times_us);
    // True when every row's partition is known to exist (no DDL needed before its COPY).
    bool covers(std::span<const std::int64_t> times_us) const;
    // The current period and `ahead` more; then retention. Hourly and at every connect.
    void maintain(pg::Connection& c, std::int64_t now_unix_seconds);
    // After a reconnect or a "no partition" error the cache may be stale.
    void forget() { known_.clear(); }

private:
    void create(pg::Connection& c, std::int64_t start);
    void drop_expired(pg::Connection& c, std::int64_t now_unix_seconds);

    PartitionWidth width_;
    int ahead_;
    int retention_days_;
    std::set<std::int64_t> known_;  // period starts known to exist
};

}  // namespace dnstap_collector
