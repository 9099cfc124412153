// Ingest: Frame Streams receivers on Unix and TCP sockets, one Asio coroutine per
// connection. Never waits on anything downstream: frames are offered to a FrameConsumer,
// which drops (and counts) when its queue is full.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace boost::asio { class io_context; }

namespace dnstap_collector {

struct Metrics;

// Where received frames go. Called on the I/O thread; must not block.
class FrameConsumer {
public:
    virtual ~FrameConsumer() = default;
    // Copies the payload if it accepts it; false means dropped (and already counted).
    virtual bool offer(std::span<const std::uint8_t> frame) = 0;
    // The data frames of one read, in order. A consumer with queues takes them in one go.
    virtual void offer_all(std::span<const std::span<const std::uint8_t>> frames) {
        for (const auto frame : frames) offer(frame);
    }
};

struct UnixListenerOptions {
    std::string path;
    unsigned mode = 0660;
    std::string group;  // empty: group "bind" if it exists, else the process's group
};

struct TcpListenerOptions {
    std::string host = "127.0.0.1";
    std::uint16_t port = 0;
};

class LocalSenders;

struct IngestOptions {
    std::vector<UnixListenerOptions> unix_sockets;
    std::vector<TcpListenerOptions> tcp;
    std::vector<std::string> tcp_allow;     // CIDRs allowed to connect over TCP; empty: any
    bool systemd_sockets = true;            // also take sockets passed in LISTEN_FDS
    std::size_t max_frame_size = 1 << 20;
    std::chrono::seconds handshake_timeout{10};  // READY/START must come within this
    LocalSenders* senders = nullptr;        // told of each Unix peer's pid while it is connected
};

class Ingest {
public:
    Ingest(boost::asio::io_context& io, IngestOptions options, FrameConsumer& consumer, Metrics& metrics);
    ~Ingest();
    Ingest(const Ingest&) = delete;
    Ingest& operator=(const Ingest&) = delete;

    // Binds every listener (throws std::runtime_error naming the socket on failure) and
    // starts accepting on the io_context.
    void start();
    // Closes the listeners and every connection (sessions end after their current frame).
    // Call it on the io thread (e.g. from a signal_set handler) or while the io_context is not
    // running; afterwards the io_context runs out of work on its own.
    void stop();
    std::size_t listener_count() const noexcept;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace dnstap_collector
