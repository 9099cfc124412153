#include "sinks/migrations.hpp"

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "dnstap_collector/log.hpp"
#include "dnstap_collector/sinks.hpp"

namespace dnstap_collector {

// Generated from schema/*.sql by cmake/embed_schema.cmake.
struct EmbeddedMigration {
    int version;
    std::string_view name;
    std::string_view sql;
};
const std::vector<EmbeddedMigration>& embedded_migrations();

namespace {

// pg_advisory_lock key for migrations: "dnstapM\1" read as a big-endian integer.
constexpr const char* lock_sql = "SELECT pg_advisory_lock(7236848594919116033)";
constexpr const char* unlock_sql = "SELECT pg_advisory_unlock(7236848594919116033)";

// Releases the session lock on every exit path (the connection may be reused).
class SessionLock {
public:
    explicit SessionLock(pg::Connection& c) : c_(c) { c_.exec(lock_sql); }
    ~SessionLock() {
        if (!c_.ok()) return;
        c_.rollback();
        try {
            c_.exec(unlock_sql);
        } catch (const pg::Error&) {
            // The session ends soon (the caller gives the connection up), and the lock with it.
        }
    }
    SessionLock(const SessionLock&) = delete;
    SessionLock& operator=(const SessionLock&) = delete;
private:
    pg::Connection& c_;
};

}  // namespace

int latest_schema_version() noexcept {
    int latest = 0;
    for (const auto& m : embedded_migrations()) latest = std::max(latest, m.version);
    return latest;
}

namespace {

[[noreturn]] void newer_than_known(int current, int latest) {
    throw std::runtime_error("database schema version " + std::to_string(current) +
                             " is newer than this binary knows (" + std::to_string(latest) +
                             "); upgrade dnstap-collector");
}

}  // namespace

int migrate_if_needed(pg::Connection& conn) {
    // Read-only: to_regclass needs no privilege beyond USAGE on the schema (NULL without it,
    // or when the schema is not there yet), max(version) needs SELECT.
    pg::Result exists = conn.exec("SELECT to_regclass('dnstap.schema_version') IS NOT NULL");
    if (exists.value(0, 0) == "t") {
        pg::Result r = conn.exec("SELECT coalesce(max(version), 0) FROM dnstap.schema_version");
        int current = std::stoi(std::string(r.value(0, 0)));
        int latest = latest_schema_version();
        if (current > latest) newer_than_known(current, latest);
        if (current == latest) return 0;
    }
    return migrate(conn);
}

int migrate(pg::Connection& conn) {
    SessionLock lock(conn);
    // Quiet "already exists, skipping" notices on every start.
    conn.exec("SET client_min_messages = warning");
    conn.exec("CREATE SCHEMA IF NOT EXISTS dnstap");
    conn.exec("CREATE TABLE IF NOT EXISTS dnstap.schema_version ("
              " version int PRIMARY KEY, name text NOT NULL,"
              " applied_at timestamptz NOT NULL DEFAULT now())");
    pg::Result r = conn.exec("SELECT coalesce(max(version), 0) FROM dnstap.schema_version");
    int current = std::stoi(std::string(r.value(0, 0)));
    int latest = latest_schema_version();
    if (current > latest) newer_than_known(current, latest);
    std::vector<EmbeddedMigration> todo;
    for (const auto& m : embedded_migrations())
        if (m.version > current) todo.push_back(m);
    std::sort(todo.begin(), todo.end(), [](const auto& a, const auto& b) { return a.version < b.version; });
    std::vector<std::string> applied;
    for (const auto& m : todo) {
        std::string name(m.name);
        try {
            conn.exec("BEGIN");
            // Multi-statement text: PQexec runs it as one simple query.
            conn.exec(std::string(m.sql).c_str());
            conn.exec_params("INSERT INTO dnstap.schema_version (version, name) VALUES ($1::int, $2)",
                             {std::to_string(m.version), name});
            conn.exec("COMMIT");
        } catch (const pg::Error& e) {
            conn.rollback();
            throw pg::Error("migration " + name + " failed: " + e.what(), e.sqlstate, e.connection_lost);
        }
        applied.push_back(name);
    }
    // One line per run, whatever the number of files.
    if (!applied.empty()) {
        std::string list;
        for (const auto& n : applied) list += (list.empty() ? "" : ", ") + n;
        log::info("database schema: applied " + list + " (now version " + std::to_string(todo.back().version) + ")");
    }
    conn.exec("RESET client_min_messages");
    return static_cast<int>(todo.size());
}

void migrate_database(const std::string& conninfo) {
    pg::Connection conn = pg::Connection::open(conninfo);
    int applied = migrate(conn);
    if (applied == 0)
        log::info("database schema is up to date (version " + std::to_string(latest_schema_version()) + ")");
}

}  // namespace dnstap_collector
