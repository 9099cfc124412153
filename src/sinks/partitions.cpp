#include "sinks/partitions.hpp"

#include <chrono>
#include <cstdio>
#include <vector>

#include "dnstap_collector/log.hpp"

namespace dnstap_collector {
namespace {

using namespace std::chrono;

// Transaction-level advisory lock around partition DDL, "dnstapP\1": two collectors creating
// the same partition at once would otherwise collide on the catalog's unique indexes.
constexpr const char* ddl_lock_sql = "SELECT pg_advisory_xact_lock(7236848594919116801)";

constexpr std::int64_t floor_div(std::int64_t a, std::int64_t b) noexcept {
    return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
}

std::int64_t width_seconds(PartitionWidth w) noexcept { return w == PartitionWidth::hour ? 3600 : 86400; }

}  // namespace

std::int64_t period_start(std::int64_t unix_seconds, PartitionWidth width) noexcept {
    std::int64_t w = width_seconds(width);
    return floor_div(unix_seconds, w) * w;
}

std::int64_t period_end(std::int64_t start, PartitionWidth width) noexcept { return start + width_seconds(width); }

std::string partition_name(std::int64_t start, PartitionWidth width) {
    sys_seconds t{seconds{start}};
    auto day = floor<days>(t);
    year_month_day ymd{day};
    char buf[32];
    if (width == PartitionWidth::hour) {
        auto hour = duration_cast<hours>(t - day).count();
        std::snprintf(buf, sizeof buf, "exchange_p%04d%02u%02u%02d", static_cast<int>(ymd.year()),
                      static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()), static_cast<int>(hour));
    } else {
        std::snprintf(buf, sizeof buf, "exchange_p%04d%02u%02u", static_cast<int>(ymd.year()),
                      static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()));
    }
    return buf;
}

std::optional<std::pair<std::int64_t, std::int64_t>> parse_partition_name(std::string_view name) {
    constexpr std::string_view prefix = "exchange_p";
    if (!name.starts_with(prefix)) return std::nullopt;
    std::string_view digits = name.substr(prefix.size());
    if (digits.size() != 8 && digits.size() != 10) return std::nullopt;
    for (char c : digits)
        if (c < '0' || c > '9') return std::nullopt;
    auto num = [&](std::size_t pos, std::size_t len) {
        int v = 0;
        for (std::size_t i = pos; i < pos + len; ++i) v = v * 10 + (digits[i] - '0');
        return v;
    };
    year_month_day ymd{year{num(0, 4)}, month{static_cast<unsigned>(num(4, 2))}, day{static_cast<unsigned>(num(6, 2))}};
    if (!ymd.ok()) return std::nullopt;
    std::int64_t start = sys_seconds{sys_days{ymd}}.time_since_epoch().count();
    PartitionWidth w = PartitionWidth::day;
    if (digits.size() == 10) {
        int h = num(8, 2);
        if (h > 23) return std::nullopt;
        start += h * 3600;
        w = PartitionWidth::hour;
    }
    return std::pair{start, period_end(start, w)};
}

std::string utc_literal(std::int64_t unix_seconds) {
    sys_seconds t{seconds{unix_seconds}};
    auto day = floor<days>(t);
    year_month_day ymd{day};
    hh_mm_ss hms{t - day};
    char buf[48];
    std::snprintf(buf, sizeof buf, "%04d-%02u-%02u %02d:%02d:%02d+00", static_cast<int>(ymd.year()),
                  static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                  static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                  static_cast<int>(hms.seconds().count()));
    return buf;
}

void PartitionManager::create(pg::Connection& c, std::int64_t start) {
    std::string name = partition_name(start, width_);
    // Everything pasted here is generated from an integer; quoted all the same.
    std::string sql = "CREATE TABLE IF NOT EXISTS dnstap." + pg::quote_ident(name) +
                      " PARTITION OF dnstap.exchange FOR VALUES FROM ('" + utc_literal(start) + "') TO ('" +
                      utc_literal(period_end(start, width_)) + "')";
    try {
        c.exec("BEGIN");
        c.exec(ddl_lock_sql);
        c.exec("SET LOCAL client_min_messages = warning");
        c.exec(sql.c_str());
        c.exec("COMMIT");
    } catch (const pg::Error& e) {
        c.rollback();
        // 42P17: overlaps an existing partition (the width was changed): that one holds the rows.
        if (e.sqlstate != "42P17") throw;
        log::warning("partition " + name + " not created: " + e.what());
    }
    known_.insert(start);
}

void PartitionManager::ensure_rows(pg::Connection& c, std::span<const std::int64_t> times_us) {
    std::set<std::int64_t> wanted;
    for (std::int64_t t : times_us) {
        std::int64_t s = period_start(floor_div(t, 1'000'000), width_);
        if (!known_.contains(s)) wanted.insert(s);
    }
    for (std::int64_t s : wanted) {
        create(c, s);
        log::debug("partition " + partition_name(s, width_) + " ready");
    }
}

bool PartitionManager::covers(std::span<const std::int64_t> times_us) const {
    // Rows come in time order: check each period once.
    std::int64_t last = -1;
    bool have_last = false;
    for (std::int64_t t : times_us) {
        std::int64_t s = period_start(floor_div(t, 1'000'000), width_);
        if (have_last && s == last) continue;
        if (!known_.contains(s)) return false;
        last = s;
        have_last = true;
    }
    return true;
}

void PartitionManager::maintain(pg::Connection& c, std::int64_t now) {
    std::int64_t s = period_start(now, width_);
    for (int i = 0; i <= ahead_; ++i) {
        create(c, s);
        s = period_end(s, width_);
    }
    if (retention_days_ > 0) drop_expired(c, now);
}

void PartitionManager::drop_expired(pg::Connection& c, std::int64_t now) {
    std::int64_t cutoff = now - std::int64_t{retention_days_} * 86400;
    pg::Result r = c.exec("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                          " WHERE i.inhparent = 'dnstap.exchange'::regclass ORDER BY 1");
    std::vector<std::string> expired;
    for (int i = 0; i < r.rows(); ++i) {
        std::string name(r.value(i, 0));
        auto range = parse_partition_name(name);
        // Only partitions that lie wholly before the cutoff; never DELETE rows.
        if (range && range->second <= cutoff) expired.push_back(name);
    }
    for (const auto& name : expired) {
        std::string table = "dnstap." + pg::quote_ident(name);
        try {
            c.exec("BEGIN");
            c.exec(ddl_lock_sql);
            // Another collector may have dropped it meanwhile.
            pg::Result still = c.exec_params("SELECT to_regclass($1) IS NOT NULL", {table});
            if (still.value(0, 0) == "t") {
                c.exec(("ALTER TABLE dnstap.exchange DETACH PARTITION " + table).c_str());
                c.exec(("DROP TABLE " + table).c_str());
            }
            c.exec("COMMIT");
            log::info("retention: dropped partition " + name);
        } catch (const pg::Error& e) {
            c.rollback();
            if (e.connection_lost) throw;
            log::warning("retention: cannot drop partition " + name + ": " + e.what());
        }
        if (auto range = parse_partition_name(name)) known_.erase(range->first);
    }
}

}  // namespace dnstap_collector
