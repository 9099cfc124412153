// PostgresSink: the workers encode their exchanges for binary COPY in consume() (in
// parallel, and the Exchanges stay with the worker for reuse), into a queue bounded in rows of
// compact encoded data. One writer thread keeps one transaction with one COPY open, streaming
// what is queued as it comes, for up to commit_interval; then it ends the COPY, merges the
// passive-DNS aggregate of the whole transaction (one staging COPY, one INSERT ... ON
// CONFLICT) and commits: exchange rows and their pdns counts commit together. A transaction
// that fails is retried through the per-batch path (whole, then rows in halves); when the
// database is away, batches go to the spool and are replayed when it is back.
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "dnstap_collector/log.hpp"
#include "dnstap_collector/metrics.hpp"
#include "dnstap_collector/senders.hpp"
#include "dnstap_collector/sinks.hpp"
#include "sinks/copy_encoder.hpp"
#include "sinks/migrations.hpp"
#include "sinks/partitions.hpp"
#include "sinks/pg.hpp"
#include "sinks/spool.hpp"

namespace dnstap_collector {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr auto consume_wait = 200ms;        // how long consume() waits for room
constexpr auto yield_sample = 100ms;        // storage.yield: how often the senders are looked at
constexpr auto backoff_min = 100ms;
constexpr auto backoff_max = 10'000ms;
constexpr auto maintenance_every = std::chrono::hours(1);
constexpr auto replay_slice = 1s;           // spool replay per loop, so live rows keep flowing
// A statement of the write path that gets no answer for this long (a lock held by someone
// else, a wedged server) is logged and cancelled; the batch then takes the path of a lost
// connection (spool, or wait and retry). Not applied to migrations, which may be long.
constexpr auto write_stall_limit = 60s;
// After a cancel (stall or shutdown deadline), how long to wait for the server's answer
// before giving the connection up with the outcome unknown.
constexpr auto cancel_grace = 2s;
// Encoded rows one transaction may hold before it commits (they are kept until COMMIT, to
// retry or spool them). Under a backlog (import, catching up) a larger transaction means
// fewer pdns upserts, each of which rewrites every record seen; 64 MiB keeps an import's
// peak RSS near 150 MiB.
constexpr std::size_t txn_max_bytes = 64u << 20;
// Records held for a later pdns upsert beyond which it is due at once (~130 bytes each).
constexpr std::size_t pdns_hold_max = 200'000;
// Emptied batches kept for reuse: enough for a commit interval of a busy server.
constexpr std::size_t spare_max_bytes = 32u << 20;

constexpr const char* create_stage_sql =
    "CREATE TEMP TABLE IF NOT EXISTS pdns_stage (rrname text, rrtype text, rdata text, rdata_ip inet,"
    " time_first timestamptz, time_last timestamptz, count bigint, bailiwick text, sensor_id text,"
    " rdata_name text)"
    " ON COMMIT DELETE ROWS";

// Sorted by key so concurrent collectors lock pdns rows in the same order (no deadlocks).
constexpr const char* upsert_pdns_sql =
    "INSERT INTO dnstap.pdns AS p (rrname, rrtype, rdata, rdata_ip, time_first, time_last, count,"
    " bailiwick, sensor_id, rdata_name)"
    " SELECT rrname, rrtype, rdata, rdata_ip, time_first, time_last, count, bailiwick, sensor_id, rdata_name"
    " FROM pdns_stage ORDER BY rrname COLLATE \"C\", rrtype COLLATE \"C\", rdata COLLATE \"C\""
    " ON CONFLICT (rrname, rrtype, rdata) DO UPDATE SET"
    " time_first = least(p.time_first, excluded.time_first),"
    " time_last = greatest(p.time_last, excluded.time_last),"
    " count = p.count + excluded.count,"
    " rdata_ip = coalesce(excluded.rdata_ip, p.rdata_ip),"
    " bailiwick = coalesce(excluded.bailiwick, p.bailiwick),"
    " sensor_id = coalesce(excluded.sensor_id, p.sensor_id),"
    // Unchanged for rows that have it (an indexed column: a changed value would stop HOT).
    " rdata_name = coalesce(p.rdata_name, excluded.rdata_name)";

// FIFO on a ring that grows by doubling and never shrinks: no allocation per push once it
// has grown (std::deque allocates and frees blocks as it moves along).
template <class T>
class Ring {
public:
    bool empty() const noexcept { return size_ == 0; }
    T& front() noexcept { return buf_[head_]; }
    void pop_front() {
        buf_[head_] = T();
        head_ = (head_ + 1) & (buf_.size() - 1);
        --size_;
    }
    void push_back(T v) {
        if (size_ == buf_.size()) grow();
        buf_[(head_ + size_) & (buf_.size() - 1)] = std::move(v);
        ++size_;
    }
    template <class F>
    void for_each(F f) const {
        for (std::size_t i = 0; i < size_; ++i) f(buf_[(head_ + i) & (buf_.size() - 1)]);
    }
    void clear() {
        while (!empty()) pop_front();
    }

private:
    void grow() {
        std::vector<T> next(std::max<std::size_t>(16, buf_.size() * 2));
        for (std::size_t i = 0; i < size_; ++i) next[i] = std::move(buf_[(head_ + i) & (buf_.size() - 1)]);
        buf_.swap(next);
        head_ = 0;
    }
    std::vector<T> buf_;  // power-of-two size
    std::size_t head_ = 0, size_ = 0;
};

std::int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace

struct PostgresSink::Impl {
    Impl(PostgresOptions o, Metrics& m)
        : opt(std::move(o)), metrics(m),
          parts(opt.partition_width, opt.partitions_ahead, opt.retention_days),
          copy_sql(copy::exchange_copy_statement()),
          stage_copy_sql("COPY pdns_stage (" + std::string(copy::pdns_stage_columns) + ") FROM STDIN (FORMAT binary)"),
          stage_copy_sql_v1("COPY pdns_stage (" + std::string(copy::pdns_stage_columns_v1) + ") FROM STDIN (FORMAT binary)"),
          wake_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
        opt.batch_rows = std::max<std::size_t>(opt.batch_rows, 1);
        opt.queue_rows = std::max(opt.queue_rows, opt.batch_rows);
        if (wake_fd < 0) log::warning("eventfd failed: the shutdown bound cannot interrupt database writes");
    }
    ~Impl() {
        if (wake_fd >= 0) ::close(wake_fd);
    }
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;

    PostgresOptions opt;
    Metrics& metrics;
    PartitionManager parts;
    const std::string copy_sql;
    const std::string stage_copy_sql;
    const std::string stage_copy_sql_v1;  // batches from old spool files
    // Written once at the shutdown deadline: every wait on the server is cancelled from then
    // on, and no new statement starts (pg::WaitBounds).
    const int wake_fd;

    // Queue shared with consume(); everything below `writer` belongs to the writer thread
    // (and to start() before the thread exists).
    std::mutex mu;
    std::condition_variable has_rows, has_room;
    // Encoded rows as the workers handed them in, with their pdns aggregates.
    Ring<std::unique_ptr<copy::EncodedBatch>> queue;
    std::size_t queued_rows = 0;
    // Batches back from a committed transaction, for consume() to encode into again: a
    // steady stream then allocates nothing. Kept up to about one transaction's worth.
    std::vector<std::unique_ptr<copy::EncodedBatch>> spare;
    std::size_t spare_bytes = 0;
    bool closing = false;
    bool writer_done = false;
    std::condition_variable writer_finished;
    Clock::time_point deadline{};
    std::atomic<bool> up{false};

    std::thread writer;
    bool stop_waiting_ = false;        // under mu: consume() waits no longer than consume_wait
    bool backend_nice_logged = false;
    bool started = false;
    std::optional<Spool> spool;
    std::optional<pg::Connection> conn;
    Clock::duration backoff = backoff_min;
    Clock::time_point next_attempt{};
    bool lost_logged = false;
    Clock::time_point next_maintenance{};
    log::RateLimit reject_log{std::chrono::seconds(10)};
    Clock::time_point next_yield_sample{};
    bool yielding = false;
    // The transaction being streamed (writer thread): its batches, kept until COMMIT, and the
    // pdns aggregate merged over all of them.
    struct Txn {
        bool open = false;  // BEGIN and COPY sent
        Clock::time_point started{}, commit_at{};
        std::vector<std::unique_ptr<copy::EncodedBatch>> batches;
        std::size_t bytes = 0;
        copy::PdnsAggregate pdns;
        std::string pdns_rows;  // the encoded aggregate, storage reused
        bool active() const noexcept { return !batches.empty(); }
    } txn;
    // pdns of committed transactions whose upsert is not due yet (see pdns_max_delay), and
    // when it is.
    copy::PdnsAggregate held_pdns;
    Clock::time_point pdns_due{};
    std::vector<std::unique_ptr<copy::EncodedBatch>> chunks;  // taken from the queue, per turn
    // Where the writer's time goes (logged at debug level when it stops).
    struct Phases {
        Clock::duration wait{}, encode{}, partitions{}, copy{}, pdns{}, upsert{}, commit{}, spool{};
        std::uint64_t batches = 0, rows = 0, transactions = 0;
    } phases;
    struct Timer {
        Clock::duration& into;
        Clock::time_point t0 = Clock::now();
        ~Timer() { into += Clock::now() - t0; }
    };
    log::RateLimit drop_log{std::chrono::seconds(10)};

    // --- connection ---

    pg::WaitBounds bounds(bool stall_limit) const {
        pg::WaitBounds b;
        b.wake_fd = wake_fd;
        b.wake_reason = "cancelled at the shutdown deadline";
        b.grace = cancel_grace;
        if (stall_limit) b.stall = write_stall_limit;
        return b;
    }

    void wake() {
        std::uint64_t one = 1;
        if (wake_fd >= 0 && ::write(wake_fd, &one, sizeof one) < 0) {
            // EAGAIN only when the counter is full: it is readable already.
        }
    }

    void connect_now() {
        pg::Connection c = pg::Connection::open(opt.conninfo, bounds(false));
        // Every (re)connect: covers a database rebuilt meanwhile; when up to date only a read
        // of dnstap.schema_version (no DDL, no database CREATE privilege needed).
        migrate_if_needed(c);
        c.set_bounds(bounds(true));
        if (opt.storage.active()) deprioritize_backend(c);
        if (opt.pdns) c.exec(create_stage_sql);
        parts.forget();
        parts.maintain(c, unix_now());
        next_maintenance = Clock::now() + maintenance_every;
        std::string where = c.describe();
        conn = std::move(c);
        backoff = backoff_min;
        up = true;
        metrics.database_up.store(1, std::memory_order_relaxed);
        if (lost_logged) log::info("database back: " + where);
        else log::info("database connected: " + where);
        lost_logged = false;
    }

    // The backend does most of the storing work: on a host shared with named it yields too.
    // Only over a Unix socket (the backend is on this host) and only a process that is a
    // PostgreSQL backend here (a socket from a container may name another PID namespace).
    void deprioritize_backend(pg::Connection& c) {
        const char* host = PQhost(c.get());
        const int pid = PQbackendPID(c.get());
        if (host == nullptr || (host[0] != '/' && host[0] != '@')) {
            if (!backend_nice_logged) log::info("PostgreSQL is reached over TCP: its backend keeps its priority");
            backend_nice_logged = true;
            return;
        }
        std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
        std::string cmdline;
        std::getline(in, cmdline, '\0');
        if (!cmdline.starts_with("postgres")) {
            if (!backend_nice_logged)
                log::info("PostgreSQL backend " + std::to_string(pid) + " is not a process here: it keeps its priority");
            backend_nice_logged = true;
            return;
        }
        if (!opt.storage.apply_to_process(pid, "PostgreSQL backend " + std::to_string(pid)) && !backend_nice_logged)
            log::info("moving or lowering the PostgreSQL backend needs root, CAP_SYS_NICE or the postgres user; "
                      "the writer thread and the workers are lowered regardless (give PostgreSQL's service "
                      "CPUWeight=idle if it serves only dnstap)");
        backend_nice_logged = true;
    }

    void mark_down(const std::string& reason) {
        conn.reset();
        up = false;
        metrics.database_up.store(0, std::memory_order_relaxed);
        if (!lost_logged) {
            log::error("database lost: " + reason +
                       (spool ? "; spooling to " + opt.spool_dir : std::string("; holding rows")));
            lost_logged = true;
        }
        next_attempt = Clock::now() + backoff;
        backoff = std::min<Clock::duration>(backoff * 2, backoff_max);
    }

    void lost(const pg::Error& e) {
        if (e.interrupted && past_deadline()) {
            // Not the database's fault: we cancelled at the shutdown deadline.
            conn.reset();
            up = false;
            metrics.database_up.store(0, std::memory_order_relaxed);
            log::warning(std::string("shutdown deadline: database write cancelled (") + e.what() + "); " +
                         (spool ? "what is left goes to the spool" : "what is left is counted as dropped (shutdown)"));
            return;
        }
        mark_down(pg::describe_conninfo(opt.conninfo) + ": " + e.what());
    }

    // True when connected; otherwise tries when the backoff allows.
    bool connect() {
        if (conn && conn->ok()) return true;
        if (conn) {
            mark_down(pg::describe_conninfo(opt.conninfo) + ": connection closed");
            return false;
        }
        if (Clock::now() < next_attempt) return false;
        try {
            connect_now();
            return true;
        } catch (const std::exception& e) {  // includes "schema is newer": keep retrying, logged once
            mark_down(e.what());
            return false;
        }
    }

    // --- writing ---

    void account(const copy::EncodedBatch& b, std::size_t lo, std::size_t hi) {
        metrics.rows_written.fetch_add(hi - lo, std::memory_order_relaxed);
        metrics.messages_stored.fetch_add(b.message_total(lo, hi), std::memory_order_relaxed);
    }

    void upsert_pdns(const copy::EncodedBatch& b) {
        Timer t{phases.pdns};
        conn->copy_in(b.pdns_format == 1 ? stage_copy_sql_v1 : stage_copy_sql,
                      {copy::header(), b.pdns_rows, copy::trailer()});
        Timer u{phases.upsert};
        conn->exec(upsert_pdns_sql);
    }

    void copy_rows(const copy::EncodedBatch& b, std::size_t lo, std::size_t hi) {
        Timer t{phases.copy};
        std::size_t begin = lo ? b.row_end[lo - 1] : 0;
        std::size_t end = hi ? b.row_end[hi - 1] : 0;
        conn->copy_in(copy_sql, {copy::header(), std::string_view(b.rows).substr(begin, end - begin), copy::trailer()});
    }

    void commit() {
        Timer t{phases.commit};
        conn->exec("COMMIT");
    }

    // Commits rows [lo, hi) alone; on rejection splits in halves until the bad rows are alone.
    // `failure` is set when this range is already known to fail (the whole batch did).
    void bisect(const copy::EncodedBatch& b, std::size_t lo, std::size_t hi, std::vector<bool>& done,
                const std::string* failure) {
        std::string message;
        if (!failure) {
            try {
                conn->exec("BEGIN");
                copy_rows(b, lo, hi);
                conn->exec("COMMIT");
                account(b, lo, hi);
                std::fill(done.begin() + static_cast<std::ptrdiff_t>(lo), done.begin() + static_cast<std::ptrdiff_t>(hi), true);
                return;
            } catch (const pg::Error& e) {
                if (e.connection_lost) throw;
                conn->rollback();
                message = e.what();
                failure = &message;
            }
        }
        if (hi - lo == 1) {
            metrics.drop(DropReason::row_rejected, b.messages[lo]);
            done[lo] = true;
            std::uint64_t suppressed = 0;
            if (reject_log.allow(suppressed))
                log::warning("row rejected by PostgreSQL: " + *failure +
                             (suppressed ? " (" + std::to_string(suppressed) + " more not shown)" : ""));
            return;
        }
        std::size_t mid = lo + (hi - lo) / 2;
        bisect(b, lo, mid, done, nullptr);
        bisect(b, mid, hi, done, nullptr);
    }

    // Rows and pdns in one transaction. On a rejected row: rows in halves, then pdns alone.
    // Throws pg::Error (connection_lost) with `b` reduced to what was not committed.
    void store(copy::EncodedBatch& b) {
        auto t0 = Clock::now();
        try {
            Timer t{phases.partitions};
            parts.ensure_rows(*conn, b.times_us);
        } catch (const pg::Error& e) {
            if (e.connection_lost) throw;
            log::warning(std::string("cannot create partition: ") + e.what());  // rows will say more
        }
        std::string failure;
        for (int attempt = 0; attempt < 2 && failure.empty(); ++attempt) {
            try {
                conn->exec("BEGIN");
                if (b.size()) copy_rows(b, 0, b.size());
                if (b.pdns_count) upsert_pdns(b);
                commit();
                account(b, 0, b.size());
                finish(t0);
                return;
            } catch (const pg::Error& e) {
                if (e.connection_lost) throw;
                conn->rollback();
                // 23514: no partition for a row; someone dropped one we thought existed.
                if (e.sqlstate == "23514" && attempt == 0) {
                    try {
                        parts.forget();
                        parts.ensure_rows(*conn, b.times_us);
                    } catch (const pg::Error& again) {
                        if (again.connection_lost) throw;
                    }
                    continue;
                }
                failure = e.what();
            }
        }
        log::warning("batch of " + std::to_string(b.size()) + " rows failed (" + failure +
                     "); retrying in parts to keep the good rows");
        std::vector<bool> done(b.size(), false);
        try {
            if (b.size()) bisect(b, 0, b.size(), done, b.size() == 1 ? &failure : nullptr);
        } catch (const pg::Error&) {
            b = b.subset(done, true);
            throw;
        }
        if (b.pdns_count) {
            try {
                conn->exec("BEGIN");
                upsert_pdns(b);
                conn->exec("COMMIT");
            } catch (const pg::Error& e) {
                if (e.connection_lost) {
                    b = b.subset(done, true);
                    throw;
                }
                conn->rollback();
                log::warning(std::string("pdns upsert failed, batch's pdns records skipped: ") + e.what());
            }
        }
        finish(t0);
    }

    void finish(Clock::time_point t0) {
        metrics.batches_written.fetch_add(1, std::memory_order_relaxed);
        auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
        metrics.batch_latency_us_sum.fetch_add(static_cast<std::uint64_t>(us), std::memory_order_relaxed);
    }

    bool past_deadline() {
        std::lock_guard lock(mu);
        return closing && Clock::now() >= deadline;
    }

    void drop(DropReason why, const copy::EncodedBatch& b) {
        metrics.drop(why, b.message_total());
        std::uint64_t suppressed = 0;
        if (drop_log.allow(suppressed))
            log::warning("dropped " + std::to_string(b.message_total()) + " messages" +
                         (b.pdns_count ? " and " + std::to_string(b.pdns_count) + " pdns records" : "") + " (" +
                         std::string(to_string(why)) + ")" +
                         (suppressed ? ", " + std::to_string(suppressed) + " similar not shown" : ""));
    }

    // Database, else spool, else wait for the database (the queue fills and consume() counts
    // sink_full) until shutdown runs out of time.
    void handle(copy::EncodedBatch&& b) {
        if (b.size() == 0 && b.pdns_count == 0) return;
        for (;;) {
            bool hurry = past_deadline();
            if (!hurry && connect()) {
                try {
                    store(b);
                    return;
                } catch (const pg::Error& e) {
                    lost(e);
                    if (b.size() == 0 && b.pdns_count == 0) return;
                }
            }
            if (spool) {
                Timer t{phases.spool};
                if (!spool->put(b)) drop(DropReason::spool_full, b);
                return;
            }
            if (hurry) {
                drop(DropReason::shutdown, b);
                return;
            }
            std::unique_lock lock(mu);
            auto until = next_attempt;
            if (closing) until = std::min(until, deadline);
            has_rows.wait_until(lock, until, [&] { return closing && Clock::now() >= deadline; });
        }
    }

    // --- streaming transaction ---

    void reset_txn() {
        txn.open = false;
        recycle(txn.batches);
        txn.bytes = 0;
        txn.pdns.clear();
    }

    // Emptied batches go back to consume(); beyond the cap they are freed.
    void recycle(std::vector<std::unique_ptr<copy::EncodedBatch>>& batches) {
        for (auto& b : batches)
            if (b) b->clear();
        {
            std::lock_guard lock(mu);
            for (auto& b : batches) give_spare_locked(std::move(b));
        }
        batches.clear();
    }

    // Under mu. `b` is empty (cleared).
    void give_spare_locked(std::unique_ptr<copy::EncodedBatch> b) {
        if (!b || spare_bytes >= spare_max_bytes) return;
        spare_bytes += b->rows.capacity();
        spare.push_back(std::move(b));
    }

    std::unique_ptr<copy::EncodedBatch> take_spare() {
        {
            std::lock_guard lock(mu);
            if (!spare.empty()) {
                auto b = std::move(spare.back());
                spare.pop_back();
                spare_bytes -= std::min(spare_bytes, b->rows.capacity());
                return b;
            }
        }
        return std::make_unique<copy::EncodedBatch>();
    }

    void open_txn() {
        try {
            Timer t{phases.partitions};
            parts.ensure_rows(*conn, txn.batches.back()->times_us);
        } catch (const pg::Error& e) {
            if (e.connection_lost) throw;
            log::warning(std::string("cannot create partition: ") + e.what());  // rows will say more
        }
        Timer t{phases.copy};
        conn->exec("BEGIN");
        txn.open = true;
        conn->copy_begin(copy_sql);
        conn->copy_put(copy::header(), false);
    }

    // Adds the chunks to the transaction (opening one), and sends their rows; their pdns
    // aggregates are merged while the server reads the rows. Chunks whose rows need a
    // partition not known to exist end the transaction first: no DDL inside a COPY.
    void stream() {
        bool covered = true;
        for (const auto& c : chunks) covered = covered && parts.covers(c->times_us);
        if (txn.active() && !covered) end_txn();
        if (past_deadline() || !(txn.open || connect())) {
            copy::EncodedBatch all = copy::EncodedBatch::concat(chunks);
            for (auto& c : chunks) all.pdns_map.merge(std::move(c->pdns_map));
            all.encode_pdns();
            recycle(chunks);
            handle(std::move(all));
            return;
        }
        try {
            if (!txn.active()) {
                txn.started = Clock::now();
                txn.commit_at = txn.started + opt.commit_interval;
            }
            std::size_t first = txn.batches.size();
            for (auto& c : chunks) {
                txn.bytes += c->rows.size();
                txn.batches.push_back(std::move(c));
            }
            chunks.clear();
            if (!txn.open) open_txn();
            {
                Timer t{phases.copy};
                // libpq sends as it buffers (non-blocking); the rest is flushed below.
                for (std::size_t k = first; k < txn.batches.size(); ++k) conn->copy_put(txn.batches[k]->rows, false);
            }
            {
                Timer t{phases.encode};
                for (std::size_t k = first; k < txn.batches.size(); ++k) txn.pdns.merge(std::move(txn.batches[k]->pdns_map));
            }
            Timer t{phases.copy};
            conn->copy_put({}, true);
        } catch (const pg::Error& e) {
            fail_txn(e);
        }
    }

    // The pdns upsert is due: its time has come, the held aggregate is large, or the writer
    // is stopping.
    bool pdns_upsert_due(std::size_t more) {
        if (opt.pdns_max_delay.count() == 0 || Clock::now() >= pdns_due ||
            held_pdns.size() + more >= pdns_hold_max)
            return true;
        std::lock_guard lock(mu);
        return closing;
    }

    // After an upsert that took `took`: the next no sooner than 20 times that (the upsert
    // then takes at most ~5% of the writer's time), and no later than pdns_max_delay.
    void schedule_pdns(Clock::duration took) {
        pdns_due = Clock::now() + std::min<Clock::duration>(took * 20, opt.pdns_max_delay);
    }

    // COPY end, the pdns upsert when due (of this transaction and those held), COMMIT.
    void commit_txn() {
        {
            Timer t{phases.copy};
            conn->copy_put(copy::trailer(), false);
        }
        const bool upsert = pdns_upsert_due(txn.pdns.size());
        if (upsert && !held_pdns.empty()) {
            // Held first: the later exchanges' bailiwick and sensor win. Should this
            // transaction fail, what was held goes with its rows (fail_txn).
            held_pdns.merge(std::move(txn.pdns));
            txn.pdns.merge(std::move(held_pdns));
        }
        // Sorted and encoded while the server reads the last rows of the COPY.
        txn.pdns_rows.clear();
        if (upsert && !txn.pdns.empty()) {
            Timer t{phases.encode};
            txn.pdns.encode(txn.pdns_rows);
        }
        {
            Timer t{phases.copy};
            conn->copy_end();
        }
        if (upsert && !txn.pdns.empty()) {
            const auto t0 = Clock::now();
            {
                Timer t{phases.pdns};
                conn->copy_in(stage_copy_sql, {copy::header(), txn.pdns_rows, copy::trailer()});
                Timer u{phases.upsert};
                conn->exec(upsert_pdns_sql);
            }
            schedule_pdns(Clock::now() - t0);
        }
        commit();
        ++phases.transactions;
        for (const auto& b : txn.batches) account(*b, 0, b->size());
        finish(txn.started);
        if (!upsert) held_pdns.merge(std::move(txn.pdns));
        reset_txn();
    }

    // The held pdns alone, in a transaction of its own (traffic paused, or shutdown): the
    // database, else the spool, like any batch.
    void flush_held_pdns() {
        copy::EncodedBatch b;
        b.pdns_map.merge(std::move(held_pdns));
        b.encode_pdns();
        const auto t0 = Clock::now();
        handle(std::move(b));
        schedule_pdns(Clock::now() - t0);
    }

    void end_txn() {
        if (!txn.active()) return;
        try {
            commit_txn();
        } catch (const pg::Error& e) {
            fail_txn(e);
        }
    }

    // The transaction failed: its batches, as one, take the per-batch path (the database
    // again, whole and then in parts to isolate rejected rows; else the spool or a wait).
    void fail_txn(const pg::Error& e) {
        copy::EncodedBatch all = copy::EncodedBatch::concat(txn.batches);
        all.pdns_map.merge(std::move(txn.pdns));
        for (auto& b : txn.batches) all.pdns_map.merge(std::move(b->pdns_map));  // not merged yet
        all.encode_pdns();
        reset_txn();
        if (e.connection_lost) {
            lost(e);
        } else {
            conn->rollback();
            log::debug(std::string("streamed transaction failed (") + e.what() + "); retrying it batch-wise");
        }
        handle(std::move(all));
    }

    void replay_spool(Clock::time_point until) {
        while (spool && !spool->empty() && Clock::now() < until && conn) {
            std::optional<copy::EncodedBatch> b = spool->front();
            if (!b) return;
            std::size_t rows = b->size();
            std::uint32_t pdns = b->pdns_count;
            try {
                store(*b);
            } catch (const pg::Error& e) {
                // Keep only what was not committed, so a later replay adds no duplicates.
                if (b->size() != rows || b->pdns_count != pdns) spool->replace_front(*b);
                lost(e);
                return;
            }
            spool->pop_front();
            if (spool->empty()) log::info("spool replayed");
        }
    }

    void maintain() {
        if (!connect()) return;
        try {
            if (Clock::now() >= next_maintenance) {
                next_maintenance = Clock::now() + maintenance_every;
                parts.maintain(*conn, unix_now());
            }
            replay_spool(Clock::now() + replay_slice);
        } catch (const pg::Error& e) {
            if (e.connection_lost) lost(e);
            else log::warning(std::string("partition maintenance: ") + e.what());
        }
    }

    // --- queue ---

    // Up to batch_rows of what is queued (at least one chunk), waiting until `until` for
    // something. `finished` once closing and nothing is left.
    void take(Clock::time_point until, bool& finished) {
        {
            Timer t{phases.wait};
            std::unique_lock lock(mu);
            if (queue.empty() && !closing) has_rows.wait_until(lock, until, [&] { return !queue.empty() || closing; });
            std::size_t rows = 0;
            while (!queue.empty() && (chunks.empty() || rows + queue.front()->size() <= opt.batch_rows)) {
                rows += queue.front()->size();
                chunks.push_back(std::move(queue.front()));
                queue.pop_front();
            }
            queued_rows -= rows;
            finished = closing && queue.empty();
        }
        has_room.notify_all();
    }

    // storage.yield: whether the local senders waited for a CPU lately (sampled every
    // yield_sample). Never while closing or once the overflow backlog reaches its bound.
    bool should_yield() {
        if (!opt.yield_to) return false;
        {
            std::lock_guard lock(mu);
            if (closing) return false;
        }
        const auto now = Clock::now();
        if (now >= next_yield_sample) {
            next_yield_sample = now + yield_sample;
            const double share = opt.yield_to->cpu_wait_share(now);
            yielding = share >= opt.yield_threshold &&
                       metrics.overflow_bytes.load(std::memory_order_relaxed) < opt.yield_backlog_bytes;
            metrics.storage_yielding.store(yielding ? 1 : 0, std::memory_order_relaxed);
        }
        return yielding;
    }

    // Commits what the open transaction holds, then sends nothing until the next sample; the
    // queue and the pool's overflow files take the frames meanwhile.
    void yield() {
        const auto t0 = Clock::now();
        try {
            if (txn.active()) end_txn();
            if (!txn.active() && !held_pdns.empty()) flush_held_pdns();
        } catch (const std::exception& e) {
            log::error(std::string("postgres writer: ") + e.what());
            reset_txn();
            conn.reset();
        }
        {
            std::unique_lock lock(mu);
            has_rows.wait_until(lock, next_yield_sample, [&] { return closing; });
        }
        metrics.storage_yield_ms.fetch_add(static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count()), std::memory_order_relaxed);
    }

    // Writer thread: queued rows -> database (or spool), maintenance in between transactions.
    void run() {
        log::name_thread("pg-writer");
        opt.storage.apply_to_this_thread("the PostgreSQL writer");
        for (;;) {
            if (should_yield()) {
                yield();
                continue;
            }
            bool finished = false;
            auto idle = spool && !spool->empty() ? 100ms : 1000ms;
            auto until = txn.active() ? txn.commit_at : Clock::now() + idle;
            if (!txn.active() && !held_pdns.empty()) until = std::min(until, pdns_due);
            take(until, finished);
            try {
                if (!chunks.empty()) {
                    ++phases.batches;
                    for (const auto& c : chunks) phases.rows += c->size();
                    stream();
                }
                if (txn.active() && (finished || Clock::now() >= txn.commit_at || txn.bytes >= txn_max_bytes ||
                                     past_deadline()))
                    end_txn();
                if (!txn.active() && !held_pdns.empty() && (finished || pdns_upsert_due(0))) flush_held_pdns();
            } catch (const std::exception& e) {
                log::error(std::string("postgres writer: ") + e.what());
                std::uint64_t n = 0;
                for (const auto& c : chunks)
                    if (c) n += c->message_total();
                for (const auto& t : txn.batches)
                    if (t) n += t->message_total();
                metrics.drop(DropReason::row_rejected, n);
                chunks.clear();
                reset_txn();
                conn.reset();  // state unknown
            }
            if (finished && !txn.active()) break;
            if (!txn.active() && !past_deadline()) maintain();
        }
        conn.reset();
        up = false;
        metrics.database_up.store(0, std::memory_order_relaxed);
        if (log::level() <= log::Level::debug) {
            auto sec = [](Clock::duration d) { return std::to_string(std::chrono::duration<double>(d).count()); };
            log::debug("postgres writer: " + std::to_string(phases.batches) + " batches in " +
                       std::to_string(phases.transactions) + " streamed transactions, " +
                       std::to_string(phases.rows) + " rows; seconds: waiting for rows " + sec(phases.wait) +
                       ", pdns merges and encoding " + sec(phases.encode) + ", partitions " + sec(phases.partitions) +
                       ", COPY " + sec(phases.copy) + ", pdns " + sec(phases.pdns) + " (upsert " + sec(phases.upsert) + "), COMMIT " +
                       sec(phases.commit) + ", spool " + sec(phases.spool));
        }
        {
            std::lock_guard lock(mu);
            writer_done = true;
        }
        writer_finished.notify_all();
    }

    // On the worker's thread: waits (bounded) for room, encodes, queues. The batch is only
    // read: the worker reuses its storage.
    void consume(std::vector<Exchange>& batch) {
        if (batch.empty()) return;
        {
            std::unique_lock lock(mu);
            if (queued_rows >= opt.queue_rows && !closing) {
                has_rows.notify_one();
                const auto room = [&] { return queued_rows < opt.queue_rows || closing; };
                if (opt.wait_for_room) {
                    has_room.wait(lock, room);
                } else if (opt.wait_while_writing) {
                    // The worker's queue (and its overflow file) fills meanwhile: wait while the
                    // rows have somewhere to go, however slowly (a database stalled by a
                    // checkpoint, a writer at low priority on a busy host). Without the database
                    // or a spool, or once shutdown begins, the usual bound.
                    while (!has_room.wait_until(lock, Clock::now() + consume_wait, room)) {
                        const bool can_store = metrics.database_up.load(std::memory_order_relaxed) != 0 || spool;
                        if (!can_store || stop_waiting_) break;
                    }
                } else {
                    has_room.wait_until(lock, Clock::now() + consume_wait, room);
                }
            }
            if (closing || queued_rows >= opt.queue_rows) {
                lock.unlock();
                std::uint64_t left = 0;
                for (const auto& e : batch) left += e.message_count();
                if (left) metrics.drop(DropReason::sink_full, left);
                return;
            }
        }
        std::unique_ptr<copy::EncodedBatch> e = take_spare();
        copy::encode_into(*e, batch, opt.pdns);
        {
            std::lock_guard lock(mu);
            if (e->size() == 0 && e->pdns_map.empty()) {
                e->clear();
                give_spare_locked(std::move(e));
                return;
            }
            if (closing) {
                // stop() has begun: the writer may be gone already.
                metrics.drop(DropReason::sink_full, e->message_total());
                return;
            }
            queued_rows += e->size();
            queue.push_back(std::move(e));
        }
        has_rows.notify_one();
    }
};

PostgresSink::PostgresSink(PostgresOptions options, Metrics& metrics)
    : impl_(std::make_unique<Impl>(std::move(options), metrics)) {}

PostgresSink::~PostgresSink() { stop(); }

void PostgresSink::stop_waiting() {
    {
        std::lock_guard lock(impl_->mu);
        impl_->stop_waiting_ = true;
    }
    impl_->has_room.notify_all();
}

void PostgresSink::start() {
    Impl& s = *impl_;
    if (s.started) return;
    if (!s.opt.spool_dir.empty()) s.spool.emplace(s.opt.spool_dir, s.opt.spool_max_bytes, s.metrics);
    try {
        s.connect_now();
    } catch (const pg::Error& e) {
        // Not fatal: the writer retries in the background; the spool (if any) takes the rows.
        s.mark_down(e.what());
    }
    s.started = true;
    s.writer = std::thread([&s] { s.run(); });
}

void PostgresSink::consume(std::vector<Exchange>&& batch) { impl_->consume(batch); }

void PostgresSink::stop() {
    Impl& s = *impl_;
    {
        std::lock_guard lock(s.mu);
        if (!s.closing) {
            s.closing = true;
            s.deadline = Clock::now() + s.opt.shutdown_timeout;
        }
    }
    s.has_rows.notify_all();
    s.has_room.notify_all();
    if (s.writer.joinable()) {
        // Bounded: at the deadline every wait on the server is cancelled (a write blocked by
        // a lock, a wedged server), and the writer moves what it holds to the spool or counts
        // it (shutdown). The join after that waits at most about cancel_grace.
        {
            std::unique_lock lock(s.mu);
            s.writer_finished.wait_until(lock, s.deadline, [&] { return s.writer_done; });
        }
        s.wake();
        s.has_rows.notify_all();
        s.writer.join();
        if (s.spool && !s.spool->empty())
            log::info(std::to_string(s.spool->messages()) + " messages left in the spool for the next start (" +
                      std::to_string(s.spool->files()) + " batches, " + std::to_string(s.spool->bytes()) +
                      " bytes in " + s.opt.spool_dir + ")");
    }
    // Never started: nothing will write what was queued.
    std::lock_guard lock(s.mu);
    std::uint64_t left = 0;
    s.queue.for_each([&](const auto& b) { left += b->message_total(); });
    s.queue.clear();
    s.queued_rows = 0;
    if (left) s.metrics.drop(DropReason::shutdown, left);
}

bool PostgresSink::database_up() const noexcept { return impl_->up.load(); }

}  // namespace dnstap_collector
