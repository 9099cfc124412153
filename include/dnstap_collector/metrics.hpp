// Counters shared by every stage. Lock-free atomics; rendering to Prometheus text lives in
// src/metrics. Every message is accounted for exactly once: stored, or dropped with a reason.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace boost::asio { class io_context; }

namespace dnstap_collector {

enum class DropReason : std::size_t {
    queue_full,        // ingest -> worker queue full (named is never made to wait)
    frame_too_large,   // data frame above max_frame_size
    partial_frame,     // connection closed inside a frame
    decode_error,      // protobuf that does not parse, or not a dnstap Message
    sink_full,         // rows could not be handed to the sink in time
    spool_full,        // database away and spool full
    row_rejected,      // PostgreSQL rejected the row even on its own
    filtered,          // excluded by configuration (privacy / kinds / names)
    shutdown,          // still in memory when the shutdown bound ran out
    count_
};
std::string_view to_string(DropReason r) noexcept;

enum class ConnectionKind : std::size_t { unix_socket, tcp, count_ };

struct Metrics {
    using Counter = std::atomic<std::uint64_t>;

    Counter connections_total{0};
    Counter connections_active{0};
    Counter connections_rejected{0};   // handshake refused, protocol errors
    Counter frames_received{0};        // dnstap data frames read off sockets / files
    Counter bytes_received{0};
    Counter frames_accepted{0};        // handed to a worker queue
    // Data frames and bytes by the kind of connection they came over.
    std::array<Counter, static_cast<std::size_t>(ConnectionKind::count_)> connection_frames{}, connection_bytes{};
    std::array<Counter, static_cast<std::size_t>(DropReason::count_)> dropped{};
    // Frames dropped before decode cannot be attributed to a message; messages dropped after
    // decode are counted once per message, so frames_received == messages_stored + sum(dropped).
    Counter messages_decoded{0};
    Counter dns_parse_errors{0};       // DNS payload bad but row kept with what parsed
    Counter messages_stored{0};        // messages inside rows PostgreSQL (or the file) took
    Counter pairs_matched{0};
    Counter queries_timed_out{0};
    Counter responses_orphaned{0};
    Counter duplicates{0};
    Counter rows_written{0};
    Counter batches_written{0};
    Counter batch_latency_us_sum{0};
    Counter spool_bytes{0};
    // Gauge: messages held in spool files now (restored from the files at start). With it a
    // run balances: frames_received == messages_stored + dropped_total
    //                                   + messages_spooled(at exit) - messages_spooled(at start).
    Counter messages_spooled{0};
    Counter file_frames_dropped{0};    // frames missing from the -w copy while PostgreSQL stores
    Counter database_up{0};
    Counter queue_depth{0};            // gauge: frames waiting for a worker, overflow files included
    Counter overflow_bytes{0};         // gauge: bytes waiting in overflow files
    Counter overflow_frames{0};        // gauge: frames waiting in overflow files
    Counter frames_overflowed{0};      // frames that waited in an overflow file
    // Frames a previous run left in overflow files (taken up at start). With overflow files a
    // run balances: frames_received + frames_restored == messages_stored + dropped_total
    //                                                    + overflow_frames(at exit) (+ spool change).
    Counter frames_restored{0};
    // storage_yield: 1 while storage waits for the local senders to stop waiting for a CPU,
    // and the time it waited in all (milliseconds).
    Counter storage_yielding{0};
    Counter storage_yield_ms{0};

    void drop(DropReason r, std::uint64_t n = 1) noexcept {
        dropped[static_cast<std::size_t>(r)].fetch_add(n, std::memory_order_relaxed);
    }
    void count_connection_frames(ConnectionKind kind, std::uint64_t frames, std::uint64_t bytes) noexcept {
        connection_frames[static_cast<std::size_t>(kind)].fetch_add(frames, std::memory_order_relaxed);
        connection_bytes[static_cast<std::size_t>(kind)].fetch_add(bytes, std::memory_order_relaxed);
    }
    std::uint64_t dropped_total() const noexcept;
    // One line, key=value, for logs and for tests that check the accounting invariant.
    std::string summary() const;
    // Prometheus text exposition format.
    std::string prometheus() const;
};

// Prometheus endpoint (Boost.Beast): GET /metrics answers render(). Runs on the given
// io_context; one small coroutine per scrape.
class MetricsServer {
public:
    MetricsServer(boost::asio::io_context& io, const std::string& host_port, std::function<std::string()> render);
    ~MetricsServer();
    MetricsServer(const MetricsServer&) = delete;
    MetricsServer& operator=(const MetricsServer&) = delete;
    void start();  // binds (throws std::runtime_error naming the address) and serves
    void stop();
private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace dnstap_collector
