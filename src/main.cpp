// dnstap-collector: wires the stages together. ingest -> decode/pair (worker pool) -> sinks.
#include <utility>  // before Boost.Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <malloc.h>

#include <array>
#include <csignal>
#include <thread>
#include <cstdio>
#include <iostream>

#include <systemd/sd-daemon.h>

#include "dnstap_collector/config.hpp"
#include "dnstap_collector/decode.hpp"
#include "dnstap_collector/frame.hpp"
#include "dnstap_collector/ingest.hpp"
#include "dnstap_collector/log.hpp"
#include "dnstap_collector/lookup.hpp"
#include "dnstap_collector/metrics.hpp"
#include "dnstap_collector/pipeline.hpp"
#include "dnstap_collector/senders.hpp"
#include "dnstap_collector/sinks.hpp"

using namespace dnstap_collector;

namespace {

// Counts what reaches the end of the pipeline when no database is configured (import as a
// benchmark of decode + pair, or serve with only a file sink).
class CountingSink : public ExchangeSink {
public:
    explicit CountingSink(Metrics& m) : metrics_(m) {}
    void consume(std::vector<Exchange>&& batch) override {
        std::uint64_t messages = 0;
        for (const auto& e : batch) messages += e.message_count();
        metrics_.messages_stored.fetch_add(messages, std::memory_order_relaxed);
    }
private:
    Metrics& metrics_;
};

// Ingest hands every frame to the file sink (raw, as fstrm_capture) and to the worker pool.
class Tee : public FrameConsumer {
public:
    Tee(FileSink* file, WorkerPool* pool) : file_(file), pool_(pool) {}
    bool offer(std::span<const std::uint8_t> frame) override {
        bool taken = file_ && file_->offer(frame);  // the file counts what it stores or misses
        if (pool_) taken = pool_->offer(frame) || taken;
        return taken;
    }
    void offer_all(std::span<const std::span<const std::uint8_t>> frames) override {
        if (file_) file_->offer_all(frames);
        if (pool_) pool_->offer_all(frames);
    }
private:
    FileSink* file_;
    WorkerPool* pool_;
};

// One line when messages start being dropped and one when it stops, with counts by reason,
// instead of a line per drop: at 100k drops/s a line each would bury everything else.
class DropReporter {
public:
    explicit DropReporter(const Metrics& m) : metrics_(m), last_(snapshot()) {}

    void tick() {
        const auto now = snapshot();
        std::uint64_t new_drops = 0;
        for (std::size_t i = 0; i < now.size(); ++i) new_drops += now[i] - last_[i];
        if (new_drops > 0) {
            if (!dropping_) {
                dropping_ = true;
                episode_start_ = last_;
                started_ = std::chrono::steady_clock::now();
                log::warning("dropping messages: " + describe(last_, now));
            }
            quiet_ticks_ = 0;
        } else if (dropping_ && ++quiet_ticks_ >= 10) {
            dropping_ = false;
            const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_);
            log::info("dropping stopped after " + std::to_string(seconds.count()) + " s: " + describe(episode_start_, now));
        }
        last_ = now;
    }

private:
    using Snapshot = std::array<std::uint64_t, static_cast<std::size_t>(DropReason::count_)>;
    Snapshot snapshot() const {
        Snapshot s{};
        for (std::size_t i = 0; i < s.size(); ++i) s[i] = metrics_.dropped[i].load(std::memory_order_relaxed);
        return s;
    }
    static std::string describe(const Snapshot& from, const Snapshot& to) {
        std::string out;
        std::uint64_t total = 0;
        for (std::size_t i = 0; i < to.size(); ++i) {
            if (to[i] == from[i]) continue;
            total += to[i] - from[i];
            out += (out.empty() ? "" : ", ") + std::string(to_string(static_cast<DropReason>(i))) + "=" +
                   std::to_string(to[i] - from[i]);
        }
        return std::to_string(total) + " dropped (" + out + ")";
    }
    const Metrics& metrics_;
    Snapshot last_, episode_start_{};
    bool dropping_ = false;
    int quiet_ticks_ = 0;
    std::chrono::steady_clock::time_point started_;
};

// SIGHUP: settings that can change while running are applied; the others are named so the
// operator knows a restart is needed for them.
void reload_config(const Config& running, int argc, char** argv) {
    if (running.config_file.empty()) {
        log::info("SIGHUP: no --config file to reload");
        return;
    }
    try {
        const Config fresh = parse_command_line(argc, argv);
        if (fresh.log_level != running.log_level) {
            log::set_level(fresh.log_level == "debug" ? log::Level::debug
                           : fresh.log_level == "warning" ? log::Level::warning
                           : fresh.log_level == "error" ? log::Level::error : log::Level::info);
            log::info("SIGHUP: log level now " + fresh.log_level);
        }
        std::vector<std::string> need_restart;
        if (fresh.ingest.unix_sockets.size() != running.ingest.unix_sockets.size() ||
            fresh.ingest.tcp.size() != running.ingest.tcp.size())
            need_restart.push_back("listeners");
        if (fresh.postgres.has_value() != running.postgres.has_value() ||
            (fresh.postgres && fresh.postgres->conninfo != running.postgres->conninfo))
            need_restart.push_back("postgres");
        if (fresh.metrics_address != running.metrics_address) need_restart.push_back("metrics");
        if (fresh.pipeline.workers != running.pipeline.workers) need_restart.push_back("workers");
        std::string msg = "SIGHUP: configuration reloaded from " + running.config_file;
        if (!need_restart.empty()) {
            msg += "; changed settings that take effect at the next start:";
            for (const auto& n : need_restart) msg += " " + n;
        }
        log::info(msg);
    } catch (const std::exception& e) {
        log::error(std::string("SIGHUP: configuration not reloaded, keeping the running one: ") + e.what());
    }
}

std::string conninfo_of(const Config& c) { return c.postgres ? c.postgres->conninfo : std::string(); }

int run_serve(Config& config, int argc, char** argv) {
    if (!config.postgres && !config.file && config.pipeline.decode)
        throw ConfigError("serve needs somewhere to store: --postgres CONNINFO and/or -w FILE");
    if (config.pipeline.storage.yield && (!config.postgres || config.pipeline.overflow_dir.empty()))
        throw ConfigError("storage_yield needs --postgres and --overflow-dir: frames wait in the overflow files while "
                          "storage yields");
    if (config.check_only) {
        std::cout << "configuration OK\n";
        return 0;
    }
    Metrics metrics;
    LocalSenders senders;  // before the stages that use it, so it outlives them
    std::unique_ptr<PostgresSink> postgres;
    std::unique_ptr<FileSink> file;
    std::unique_ptr<WorkerPool> pool;
    SinkSet sinks;
    if (config.postgres) {
        config.postgres->storage = config.pipeline.storage;
        if (config.pipeline.storage.yield) {
            config.ingest.senders = &senders;
            config.postgres->yield_to = &senders;
            config.postgres->yield_backlog_bytes = config.pipeline.overflow_max_bytes / 2;
        }
        postgres = std::make_unique<PostgresSink>(*config.postgres, metrics);
        postgres->start();
    }
    if (config.file) {
        config.file->is_store = !postgres;
        file = std::make_unique<FileSink>(*config.file, metrics);
        file->start();
    }
    boost::asio::io_context io(1);
    std::unique_ptr<TailSink> tail;
    if (!config.tail_socket.empty()) {
        tail = std::make_unique<TailSink>(io, config.tail_socket);
        tail->start();
        sinks.add(*tail);
    }
    if (postgres) sinks.add(*postgres);  // last: it takes the batch, the others get copies
    // With only a file as the store, the pool feeds tail alone: its counts are kept apart so
    // that frames_received == stored + dropped still holds for what the file took. With
    // --no-decode the pool itself is the store (it counts and discards).
    Metrics tail_only_metrics;
    CountingSink discard(metrics);
    if (!config.pipeline.decode) sinks.add(discard);
    if (!sinks.empty())
        pool = std::make_unique<WorkerPool>(config.pipeline, sinks,
                                            postgres || !config.pipeline.decode ? metrics : tail_only_metrics);
    Tee tee(file.get(), pool.get());

    Ingest ingest(io, config.ingest, tee, metrics);
    ingest.start();
    if (ingest.listener_count() == 0) throw ConfigError("no listener: give -u PATH or -a HOST:PORT");

    std::unique_ptr<MetricsServer> metrics_server;
    if (!config.metrics_address.empty()) {
        metrics_server = std::make_unique<MetricsServer>(io, config.metrics_address, [&] {
            if (pool) {
                metrics.queue_depth.store(pool->queued(), std::memory_order_relaxed);
                pool->publish_overflow();
            }
            return metrics.prometheus();
        });
        metrics_server->start();
    }

    boost::asio::steady_timer drop_timer(io), ready_timer(io);
    boost::asio::signal_set stop_signals(io, SIGTERM, SIGINT);
    boost::asio::signal_set file_signals(io, SIGHUP, SIGUSR1);
    stop_signals.async_wait([&](const boost::system::error_code& ec, int signal) {
        if (ec) return;
        log::info(std::string("signal ") + (signal == SIGTERM ? "SIGTERM" : "SIGINT") + ": draining and stopping");
        ingest.stop();
        if (metrics_server) metrics_server->stop();
        if (tail) tail->stop();
        file_signals.cancel();
        drop_timer.cancel();
        ready_timer.cancel();
    });
    std::function<void()> wait_file_signal = [&] {
        file_signals.async_wait([&](const boost::system::error_code& ec, int signal) {
            if (ec) return;
            if (signal == SIGHUP) reload_config(config, argc, argv);
            if (file) {
                if (signal == SIGUSR1) file->rotate();
                else file->reopen();
            }
            wait_file_signal();
        });
    };
    wait_file_signal();

    // READY once the sockets listen and the rows have somewhere to go: the database, or the
    // spool. Without a spool, wait a while for the database, but never hold named back for
    // good (it waits for us: Before=named.service). Frames are read meanwhile.
    const bool wait_for_database = postgres && config.postgres->spool_dir.empty();
    const auto ready_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    std::function<void()> notify_ready = [&] {
        if (wait_for_database && !postgres->database_up() && std::chrono::steady_clock::now() < ready_deadline) {
            ready_timer.expires_after(std::chrono::milliseconds(50));
            ready_timer.async_wait([&](const boost::system::error_code& ec) {
                if (!ec) notify_ready();
            });
            return;
        }
        if (wait_for_database && !postgres->database_up())
            log::warning("PostgreSQL is not reachable and no spool is configured: ready anyway; "
                         "rows are dropped (sink_full) until it is back");
        sd_notify(0, "READY=1");
        log::info("dnstap-collector ready");
    };
    notify_ready();

    DropReporter drops(metrics);
    std::function<void()> watch_drops = [&] {
        drop_timer.expires_after(std::chrono::seconds(1));
        drop_timer.async_wait([&](const boost::system::error_code& ec) {
            if (ec) return;
            drops.tick();
            watch_drops();
        });
    };
    watch_drops();
    io.run();
    stop_signals.cancel();
    file_signals.cancel();

    sd_notify(0, "STOPPING=1");
    if (postgres) postgres->stop_waiting();
    if (pool) pool->drain_and_stop();
    if (postgres) postgres->stop();
    if (file) file->stop();
    log::info("stats: " + metrics.summary());
    return 0;
}

int run_import(Config& config) {
    if (config.arguments.empty()) throw ConfigError("import needs one or more Frame Streams files");
    // The overflow directory belongs to the running service; a file needs no overflow.
    config.pipeline.overflow_dir.clear();
    Metrics metrics;
    std::unique_ptr<PostgresSink> postgres;
    CountingSink counting(metrics);
    ExchangeSink* sink = &counting;
    if (config.postgres) {
        // Backfills are usually older than the retention window: an import never drops data.
        config.postgres->retention_days = 0;
        // Nobody upstream of a file has to be kept from waiting: slow down instead of dropping.
        config.postgres->wait_for_room = true;
        postgres = std::make_unique<PostgresSink>(*config.postgres, metrics);
        postgres->start();
        sink = postgres.get();
    }
    int status = 0;
    const auto started = std::chrono::steady_clock::now();
    {
        WorkerPool pool(config.pipeline, *sink, metrics);
        for (const auto& path : config.arguments) {
            auto result = read_frame_file(path, [&](std::span<const std::uint8_t> frame) {
                metrics.frames_received.fetch_add(1, std::memory_order_relaxed);
                metrics.bytes_received.fetch_add(frame.size(), std::memory_order_relaxed);
                pool.push_wait(frame);
            }, config.ingest.max_frame_size);
            if (result.oversized) {
                metrics.frames_received.fetch_add(result.oversized, std::memory_order_relaxed);
                metrics.drop(DropReason::frame_too_large, result.oversized);
            }
            if (!result.error.empty()) {
                log::error(result.error);
                status = 1;
            }
        }
        pool.drain_and_stop();
    }
    if (postgres) postgres->stop();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const auto frames = metrics.frames_received.load();
    log::info("imported " + std::to_string(frames) + " frames in " + std::to_string(seconds) + " s (" +
              std::to_string(static_cast<std::uint64_t>(seconds > 0 ? frames / seconds : 0)) + " frames/s)");
    log::info("stats: " + metrics.summary());
    return status;
}

int run_read(Config& config) {
    if (config.arguments.size() != 1) throw ConfigError("read needs exactly one file");
    DnstapMessage message;
    std::uint64_t bad = 0;
    std::string line;
    auto result = read_frame_file(config.arguments[0], [&](std::span<const std::uint8_t> frame) {
        message = DnstapMessage{};
        const auto status = decode_dnstap(frame, message);
        if (status == DecodeStatus::bad_protobuf || status == DecodeStatus::not_message) {
            ++bad;
            return;
        }
        line = config.json ? format_json(message) : format_text(message);
        line.push_back('\n');
        std::fwrite(line.data(), 1, line.size(), stdout);
    });
    if (bad) log::warning(std::to_string(bad) + " frames were not dnstap messages");
    if (!result.error.empty()) {
        log::error(result.error);
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);
    // A fixed threshold keeps large buffers (batches, COPY data) in their own mappings, given
    // back on free. glibc otherwise raises it after each large free and carves later large
    // buffers out of the per-thread heaps, where buffers allocated by one thread and freed by
    // another left the heaps fragmented: RSS grew by hundreds of MiB per hour under CPU contention.
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    try {
        Config config = parse_command_line(argc, argv);
        if (config.log_level == "debug") log::set_level(log::Level::debug);
        else if (config.log_level == "warning") log::set_level(log::Level::warning);
        else if (config.log_level == "error") log::set_level(log::Level::error);

        if (config.command == "serve") return run_serve(config, argc, argv);
        if (config.command == "import") return run_import(config);
        if (config.command == "read") return run_read(config);
        if (config.command == "migrate") {
            migrate_database(conninfo_of(config));
            std::cout << "schema at version " << latest_schema_version() << '\n';
            return 0;
        }
        if (config.command == "lookup") {
            if (config.arguments.size() != 1) throw ConfigError("lookup needs one NAME, *.SUFFIX, IP or CIDR");
            return run_lookup(conninfo_of(config), config.arguments[0], LookupWindow{config.window_from, config.window_to}, std::cout);
        }
        if (config.command == "report")
            return run_report(conninfo_of(config), LookupWindow{config.window_from, config.window_to}, static_cast<std::size_t>(config.limit), std::cout);
        if (config.command == "tail") {
            std::string request = config.json ? "json" : "text";
            if (!config.tail_suffix.empty()) request += " suffix=" + config.tail_suffix;
            if (!config.tail_client.empty()) request += " client=" + config.tail_client;
            if (!config.tail_rcode.empty()) request += " rcode=" + config.tail_rcode;
            return run_tail(config.tail_socket.empty() ? "/run/dnstap-collector/tail.sock" : config.tail_socket, request, std::cout);
        }
        throw ConfigError("unknown command '" + config.command + "'");
    } catch (const ConfigError& e) {
        std::cerr << e.what() << '\n';
        return 2;
    } catch (const std::exception& e) {
        log::error(e.what());
        return 1;
    }
}
