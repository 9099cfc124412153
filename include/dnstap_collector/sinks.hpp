// Sinks: where exchanges (and raw frames) end up. PostgreSQL (dnstap.exchange + dnstap.pdns,
// binary COPY, batches, spool when the database is away) and a Frame Streams file writer.
#pragma once

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dnstap_collector/pair.hpp"

namespace boost::asio { class io_context; }

namespace dnstap_collector {

struct Metrics;
class LocalSenders;

// Where decoding, pairing and storing run on a host shared with named: everything after
// ingest (worker threads, the PostgreSQL writer thread, and the local PostgreSQL backend when
// permitted). Ingest keeps the process's priority, so named's stream is always read; with
// overflow files, storage catches up when the CPU is free instead of dropping.
struct StoragePriority {
    int nice = 0;        // 0-19
    std::string cgroup;  // a cgroup directory (cpu.idle = 1) to join; empty: none
    // Storage pauses while the local senders (named on this host) wait for a CPU, and frames
    // wait in overflow files meanwhile: for hosts where named alone can fill the cores.
    bool yield = false;
    bool active() const noexcept { return nice > 0 || !cgroup.empty(); }
    // For the calling thread; failures are logged.
    void apply_to_this_thread(std::string_view what) const;
    // For another process (the PostgreSQL backend): needs root, the same user or
    // CAP_SYS_NICE; false (logged) when something was not permitted.
    bool apply_to_process(int pid, std::string_view what) const;
};
// The steps, for tests. Lowering never raises a priority (a service-wide Nice= above `nice`
// stays); Linux nice values are per thread.
bool lower_thread_priority(int nice, std::string_view what);
bool lower_process_priority(int pid, int nice, std::string_view what);
// Moves the calling thread into the cgroup directory `dir` (v2: cgroup.threads, v1: tasks).
bool join_cgroup(const std::string& dir, std::string_view what);
// Moves process `pid` (all its threads) into the cgroup directory `dir` (cgroup.procs).
bool move_process_to_cgroup(const std::string& dir, int pid, std::string_view what);

// Takes batches of exchanges from the workers. May wait a bounded time when its own queue is
// full; what it cannot take is counted as dropped (sink_full), never silently lost.
class ExchangeSink {
public:
    virtual ~ExchangeSink() = default;
    virtual void consume(std::vector<Exchange>&& batch) = 0;
    // False when the sink would throw the batch away (tail with nobody attached): the fan-out
    // then skips it, so an idle sink costs nothing.
    virtual bool active() const noexcept { return true; }
};

// Fans a batch out to several sinks (e.g. PostgreSQL and tail).
class SinkSet : public ExchangeSink {
public:
    void add(ExchangeSink& sink) { sinks_.push_back(&sink); }
    void consume(std::vector<Exchange>&& batch) override;
    bool empty() const noexcept { return sinks_.empty(); }
private:
    std::vector<ExchangeSink*> sinks_;
};

enum class PartitionWidth { hour, day };

struct PostgresOptions {
    std::string conninfo;                                 // libpq conninfo or URI; PG* env also works
    std::size_t batch_rows = 20'000;                      // rows sent into the COPY at a time
    // Rows stream into one open COPY (one transaction, one pdns merge) for up to this long
    // before COMMIT: rows are visible at most commit_interval after they reach the sink
    // (plus the COMMIT itself). Rows are sent as soon as they are queued.
    std::chrono::milliseconds commit_interval{500};
    // The pdns upsert costs the server about the same for a record seen once or a thousand
    // times, so under load the aggregate is carried over several transactions: the next
    // upsert comes no sooner than 20 times the last one took, and at most this long after
    // it (0: every transaction). Light traffic still sees pdns at each COMMIT.
    std::chrono::milliseconds pdns_max_delay{5000};
    std::size_t queue_rows = 50'000;                      // rows waiting for the writer (encoded: ~350 bytes each)
    PartitionWidth partition_width = PartitionWidth::day;
    int partitions_ahead = 3;
    int retention_days = 30;                              // 0: keep forever
    std::string spool_dir;                                // empty: no spool
    std::uint64_t spool_max_bytes = 1ull << 30;
    bool pdns = true;                                     // maintain dnstap.pdns
    bool wait_for_room = false;                           // consume() waits for room instead of
                                                          // dropping (import: a file can wait)
    std::chrono::seconds shutdown_timeout{10};
    // The writer thread, and the backend when it runs on this host (Unix socket).
    StoragePriority storage;
    // consume() waits for room as long as the database (or the spool) takes rows, instead of
    // dropping after a bound: a stall of the database is then absorbed by the pool's queues
    // (or its overflow files) in front of the workers before anything is dropped. Until
    // stop_waiting(). False: the bounded wait (200 ms), then sink_full.
    bool wait_while_writing = true;
    // storage.yield: whose CPU waits the writer yields to, and from what share (seconds the
    // senders' threads waited per second; 0.05 = 50 ms a second, summed over threads).
    LocalSenders* yield_to = nullptr;
    double yield_threshold = 0.05;
    std::uint64_t yield_backlog_bytes = ~0ull;  // no yielding once overflow files hold this much
};

// Applies schema/NNN_*.sql in order under an advisory lock; idempotent; throws
// std::runtime_error when the database has a newer schema than this binary knows.
void migrate_database(const std::string& conninfo);
int latest_schema_version() noexcept;

class PostgresSink : public ExchangeSink {
public:
    PostgresSink(PostgresOptions options, Metrics& metrics);
    ~PostgresSink() override;  // stop() if still running
    PostgresSink(const PostgresSink&) = delete;
    PostgresSink& operator=(const PostgresSink&) = delete;

    // Connects, migrates, creates partitions, starts the writer thread. A database that is not
    // reachable is logged (host and reason) and retried in the background; the spool takes the
    // rows meanwhile.
    void start();
    void consume(std::vector<Exchange>&& batch) override;
    // Shutdown begins: consume() goes back to its bounded wait (wait_while_writing), so the
    // workers' drain cannot hang on a writer that is stuck.
    void stop_waiting();
    // Drains what is queued within options.shutdown_timeout; what is left goes to the spool or
    // is counted (DropReason::shutdown).
    void stop();
    bool database_up() const noexcept;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

struct FileSinkOptions {
    std::string path;              // strftime patterns allowed when split_seconds > 0
    int split_seconds = 0;         // 0: one file
    bool localtime = false;        // strftime in local time instead of UTC
    bool is_store = true;          // false beside PostgreSQL: a frame it misses is not a lost message
};

// Writes raw frames to a Frame Streams file (START with content type, frames, STOP), the
// format fstrm_capture writes. Runs its own thread behind a bounded queue.
class FileSink {
public:
    FileSink(FileSinkOptions options, Metrics& metrics);
    ~FileSink();
    void start();
    bool offer(std::span<const std::uint8_t> frame);  // never blocks
    // The frames of one read, under one lock; returns how many were taken (the rest counted).
    std::size_t offer_all(std::span<const std::span<const std::uint8_t>> frames);
    void rotate();   // SIGUSR1: finish the file and open the next
    void reopen();   // SIGHUP: same as rotate (log rotation tools moved the file)
    void stop();     // finishes the file with STOP
private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Live view for `dnstap-collector tail`: clients attach to a Unix socket, send one request line
// ("text" or "json", then filters "suffix=NAME", "client=IP", "rcode=NXDOMAIN"), and receive
// one line per exchange. Slow clients lose lines (told with a "# dropped N" line), never
// slowing the pipeline.
class TailSink : public ExchangeSink {
public:
    TailSink(boost::asio::io_context& io, std::string socket_path);
    ~TailSink() override;
    void start();  // binds the socket (mode 0600: tails see client addresses)
    void stop();
    void consume(std::vector<Exchange>&& batch) override;
    bool active() const noexcept override;
private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

// Client side of `tail`: attaches to a running collector and copies lines to `out`.
int run_tail(const std::string& socket_path, const std::string& request, std::ostream& out);

}  // namespace dnstap_collector
