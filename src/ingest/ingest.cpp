// Ingest: Frame Streams receivers, one Asio coroutine per connection, all on the io thread.
#include <utility>  // before Boost.Asio: Boost 1.74's awaitable.hpp needs std::exchange with GCC 12

#include "dnstap_collector/ingest.hpp"

// GCC 12 at -O2 reports a false "potential null pointer dereference" inside Asio 1.74's
// scheduler (inlined, so the system-header exemption does not apply).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#pragma GCC diagnostic pop

#include <sys/socket.h>
#include <systemd/sd-daemon.h>

#include <cstring>
#include <list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "dnstap_collector/frame.hpp"
#include "dnstap_collector/log.hpp"
#include "dnstap_collector/metrics.hpp"
#include "dnstap_collector/senders.hpp"
#include "ingest/socket_setup.hpp"

namespace dnstap_collector {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using boost::system::error_code;
using UnixProtocol = asio::local::stream_protocol;
using Tcp = asio::ip::tcp;
using Socket = asio::generic::stream_protocol::socket;
using ingest_detail::Cidr;

constexpr auto accept_retry_delay = std::chrono::milliseconds(100);
constexpr std::size_t max_read_size = 256 * 1024;

// I/O outcomes are values: `co_await op(..., nothrow(ec))`.
auto nothrow(error_code& ec) { return asio::redirect_error(use_awaitable, ec); }

void log_limited(log::RateLimit& limit, log::Level level, const std::string& message) {
    std::uint64_t suppressed = 0;
    if (!limit.allow(suppressed)) return;
    log::write(level, suppressed ? message + " (" + std::to_string(suppressed) + " similar suppressed)" : message);
}

std::string endpoint_text(const Tcp::endpoint& ep) {
    const auto a = ep.address();
    return (a.is_v6() ? "[" + a.to_string() + "]" : a.to_string()) + ":" + std::to_string(ep.port());
}

struct UnixListener {
    UnixListener(asio::io_context& io, std::string p) : acceptor(io), retry(io), path(std::move(p)) {}
    UnixProtocol::acceptor acceptor;
    asio::steady_timer retry;
    std::string path;
    bool owns_file = false;  // false for a socket systemd passed: systemd owns its file
    dev_t dev = 0;
    ino_t ino = 0;
    std::string name() const { return "unix:" + path; }
};

struct TcpListener {
    explicit TcpListener(asio::io_context& io) : acceptor(io), retry(io) {}
    Tcp::acceptor acceptor;
    asio::steady_timer retry;
    std::string name() const {
        error_code ec;
        const auto ep = acceptor.local_endpoint(ec);
        return ec ? std::string("tcp:?") : "tcp:" + endpoint_text(ep);
    }
};

struct Connection {
    Connection(Socket s, std::string p, int pid)
        : socket(std::move(s)), watchdog(socket.get_executor()), peer(std::move(p)), peer_pid(pid) {
        error_code ec;
        kind = socket.local_endpoint(ec).protocol().family() == AF_UNIX ? ConnectionKind::unix_socket : ConnectionKind::tcp;
    }
    Socket socket;
    ConnectionKind kind;
    asio::steady_timer watchdog;
    std::string peer;
    int peer_pid = 0;  // Unix peers on this host; 0: unknown (TCP)
    bool handshake_done = false;
    bool timed_out = false;
};

// Everything the coroutines touch. Shared with them so a frame that outlives Ingest (the
// io_context destroyed with work pending) never dangles.
struct State {
    State(asio::io_context& i, IngestOptions o, FrameConsumer& c, Metrics& m)
        : io(i), options(std::move(o)), consumer(c), metrics(m) {}
    asio::io_context& io;
    IngestOptions options;
    FrameConsumer& consumer;
    Metrics& metrics;
    std::vector<Cidr> allow;
    std::list<UnixListener> unix_listeners;
    std::list<TcpListener> tcp_listeners;
    std::list<Connection*> connections;  // live sessions, for stop()
    bool started = false;
    bool stopping = false;
    log::RateLimit protocol_errors, accept_errors, refused, oversized;
};

class Registration {
public:
    Registration(std::list<Connection*>& list, Connection* c) : list_(list), it_(list.insert(list.end(), c)) {}
    ~Registration() { list_.erase(it_); }
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;

private:
    std::list<Connection*>& list_;
    std::list<Connection*>::iterator it_;
};

// A local sender counts for storage_yield while one of its connections is open.
class SenderRegistration {
public:
    SenderRegistration(LocalSenders* senders, int pid) : senders_(pid > 0 ? senders : nullptr), pid_(pid) {
        if (senders_) senders_->add(pid_);
    }
    ~SenderRegistration() {
        if (senders_) senders_->remove(pid_);
    }
    SenderRegistration(const SenderRegistration&) = delete;
    SenderRegistration& operator=(const SenderRegistration&) = delete;

private:
    LocalSenders* senders_;
    int pid_;
};

bool allowed(const State& st, const Tcp::endpoint& peer) {
    if (st.allow.empty()) return true;
    auto address = peer.address();
    if (address.is_v6() && address.to_v6().is_v4_mapped())
        address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
    for (const auto& cidr : st.allow) {
        if (address.is_v4()) {
            const auto bytes = address.to_v4().to_bytes();
            if (cidr.contains(AF_INET, bytes.data())) return true;
        } else {
            const auto bytes = address.to_v6().to_bytes();
            if (cidr.contains(AF_INET6, bytes.data())) return true;
        }
    }
    return false;
}

// Reads one connection until STOP, EOF or an error; returns why it ended.
awaitable<std::string> serve(State& st, Connection& c, std::uint64_t& frames) {
    FrameReader reader(st.options.max_frame_size);
    FrameEvent ev;
    // The data frames of one read, handed on together: their spans stay valid until the next
    // prepare(), and the counters are touched once per read instead of once per frame.
    std::vector<std::span<const std::uint8_t>> pending;
    std::uint64_t pending_bytes = 0;
    auto hand_on = [&] {
        if (pending.empty()) return;
        frames += pending.size();
        st.metrics.frames_received.fetch_add(pending.size(), std::memory_order_relaxed);
        st.metrics.bytes_received.fetch_add(pending_bytes, std::memory_order_relaxed);
        st.metrics.count_connection_frames(c.kind, pending.size(), pending_bytes);
        st.consumer.offer_all(pending);  // counts its own drops
        pending.clear();
        pending_bytes = 0;
    };
    // Small until the sender starts, so idle connections cost little; then grown while reads
    // fill it, so a busy sender needs few system calls.
    std::size_t read_size = 4096;
    for (;;) {
        const auto space = reader.prepare(read_size);
        error_code ec;
        const std::size_t n = co_await c.socket.async_read_some(asio::buffer(space.data(), space.size()), nothrow(ec));
        reader.commit(n);
        if (n == space.size() && c.handshake_done && read_size < max_read_size) read_size *= 2;

        for (;;) {
            std::error_code frame_ec;
            const auto r = reader.next(ev, frame_ec);
            if (r == FrameReader::Result::need_more) break;
            if (r == FrameReader::Result::event && ev.kind == FrameEvent::Kind::data) {
                pending.push_back(ev.data);
                pending_bytes += ev.data.size();
                continue;
            }
            hand_on();
            if (r == FrameReader::Result::error) {
                st.metrics.connections_rejected.fetch_add(1, std::memory_order_relaxed);
                std::string why = frame_ec.message();
                if (frame_ec == FrameError::content_type_mismatch) {
                    // Name what the sender offered: the usual cause is a sender set up for
                    // another Frame Streams consumer.
                    why += " (offered:";
                    for (const auto& type : ev.content_types) why += " \"" + type + "\"";
                    if (ev.content_types.empty()) why += " nothing";
                    why += ")";
                }
                log_limited(st.protocol_errors, log::Level::warning, c.peer + ": " + why + ", closing the connection");
                co_return why;
            }
            switch (ev.kind) {
            case FrameEvent::Kind::ready: {
                const auto accept = encode_control(ControlType::accept);
                error_code wec;
                co_await asio::async_write(c.socket, asio::buffer(accept), nothrow(wec));
                if (wec) co_return "writing ACCEPT: " + wec.message();
                break;
            }
            case FrameEvent::Kind::start:
                c.handshake_done = true;
                c.watchdog.cancel();
                break;
            case FrameEvent::Kind::data:
                break;  // taken above
            case FrameEvent::Kind::oversized:
                // Received, then dropped: frames_received == stored + dropped stays exact.
                ++frames;
                st.metrics.frames_received.fetch_add(1, std::memory_order_relaxed);
                st.metrics.bytes_received.fetch_add(ev.length, std::memory_order_relaxed);
                st.metrics.drop(DropReason::frame_too_large);
                log_limited(st.oversized, log::Level::warning,
                            c.peer + ": skipped a data frame of " + std::to_string(ev.length) + " bytes (limit " +
                                std::to_string(st.options.max_frame_size) + ")");
                break;
            case FrameEvent::Kind::stop:
                if (reader.bidirectional()) {
                    const auto finish = encode_control(ControlType::finish);
                    error_code wec;
                    co_await asio::async_write(c.socket, asio::buffer(finish), nothrow(wec));
                    if (wec) co_return "writing FINISH: " + wec.message();
                }
                co_return "STOP";
            }
        }
        hand_on();

        if (!ec) continue;
        if (c.timed_out) {
            st.metrics.connections_rejected.fetch_add(1, std::memory_order_relaxed);
            log_limited(st.protocol_errors, log::Level::warning,
                        c.peer + ": no READY/START within " + std::to_string(st.options.handshake_timeout.count()) +
                            " s, closing the connection");
            co_return "handshake timeout";
        }
        if (ec == asio::error::eof) {
            if (reader.pending_bytes() > 0) {
                st.metrics.frames_received.fetch_add(1, std::memory_order_relaxed);
                st.metrics.bytes_received.fetch_add(reader.pending_bytes(), std::memory_order_relaxed);
                st.metrics.drop(DropReason::partial_frame);
                log_limited(st.protocol_errors, log::Level::warning,
                            c.peer + ": connection closed inside a frame (" + std::to_string(reader.pending_bytes()) +
                                " bytes dropped)");
                co_return "closed inside a frame";
            }
            co_return "closed by the sender";
        }
        if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) co_return "shutting down";
        co_return ec.message();
    }
}

awaitable<void> session(std::shared_ptr<State> st, std::shared_ptr<Connection> c) {
    if (st->stopping) co_return;  // accepted just before stop(), started after it
    Registration registration(st->connections, c.get());
    const SenderRegistration sender(st->options.senders, c->peer_pid);
    st->metrics.connections_total.fetch_add(1, std::memory_order_relaxed);
    st->metrics.connections_active.fetch_add(1, std::memory_order_relaxed);
    log::info("connection opened: " + c->peer);

    // Handshake watchdog. Boost 1.74 has no awaitable operators (||), so it is a timer whose
    // handler closes the socket; the pending read then ends and serve() reports the timeout.
    if (st->options.handshake_timeout.count() > 0) {
        c->watchdog.expires_after(st->options.handshake_timeout);
        c->watchdog.async_wait([weak = std::weak_ptr<Connection>(c)](const error_code& ec) {
            const auto conn = weak.lock();
            if (ec || !conn || conn->handshake_done) return;
            conn->timed_out = true;
            error_code ignored;
            conn->socket.close(ignored);
        });
    }

    std::uint64_t frames = 0;
    std::string reason;
    try {
        reason = co_await serve(*st, *c, frames);
    } catch (const std::exception& e) {
        reason = std::string("internal error: ") + e.what();
        log::error(c->peer + ": " + reason);
    }
    c->watchdog.cancel();
    error_code ignored;
    c->socket.close(ignored);
    st->metrics.connections_active.fetch_sub(1, std::memory_order_relaxed);
    log::info("connection closed: " + c->peer + " (" + std::to_string(frames) + " frames, " + reason + ")");
}

int peer_pid(const UnixListener&, UnixProtocol::socket& s) {
    ucred cred{};
    socklen_t len = sizeof cred;
    return ::getsockopt(s.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid > 0 ? cred.pid : 0;
}

int peer_pid(const TcpListener&, Tcp::socket&) { return 0; }

// Unix peers are anonymous; the sender's pid tells two connections (and two nameds) apart.
std::string peer_name(const UnixListener& l, UnixProtocol::socket& s) {
    const int pid = peer_pid(l, s);
    return pid > 0 ? "unix:" + l.path + " (pid " + std::to_string(pid) + ")" : "unix:" + l.path;
}

std::string peer_name(const TcpListener&, Tcp::socket& s) {
    error_code ec;
    const auto ep = s.remote_endpoint(ec);
    return ec ? std::string("?") : endpoint_text(ep);
}

bool admit(State&, const UnixListener&, const UnixProtocol::socket&, const std::string&) { return true; }

bool admit(State& st, const TcpListener&, const Tcp::socket& s, const std::string& peer) {
    error_code ec;
    const auto ep = s.remote_endpoint(ec);
    if (!ec && allowed(st, ep)) return true;
    st.metrics.connections_rejected.fetch_add(1, std::memory_order_relaxed);
    log_limited(st.refused, log::Level::warning, "refused TCP connection from " + peer + ": not in tcp_allow");
    return false;
}

template <class Listener>
awaitable<void> accept_loop(std::shared_ptr<State> st, Listener* l) {
    const std::string name = l->name();
    try {
        for (;;) {
            error_code ec;
            auto socket = co_await l->acceptor.async_accept(nothrow(ec));
            if (st->stopping || ec == asio::error::operation_aborted) co_return;
            if (ec) {
                // EMFILE and friends: back off instead of spinning, the listener stays up.
                log_limited(st->accept_errors, log::Level::error, "accept on " + name + " failed: " + ec.message());
                l->retry.expires_after(accept_retry_delay);
                co_await l->retry.async_wait(nothrow(ec));
                if (st->stopping) co_return;
                continue;
            }
            std::string peer = peer_name(*l, socket);
            if (!admit(*st, *l, socket, peer)) continue;  // the socket closes here
            const int pid = peer_pid(*l, socket);
            auto conn = std::make_shared<Connection>(Socket(std::move(socket)), std::move(peer), pid);
            asio::co_spawn(st->io, session(st, std::move(conn)), asio::detached);
        }
    } catch (const std::exception& e) {
        log::error("listener " + name + " stopped: " + e.what());
    }
}

}  // namespace

struct Ingest::Impl {
    std::shared_ptr<State> state;

    void adopt_systemd_sockets() {
        const int n = sd_listen_fds(0);
        if (n < 0) {
            log::warning(std::string("systemd socket activation: ") + std::strerror(-n));
            return;
        }
        for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; ++fd) {
            if (sd_is_socket_unix(fd, SOCK_STREAM, 1, nullptr, 0) > 0) {
                auto& l = state->unix_listeners.emplace_back(state->io, std::string());
                l.acceptor.assign(UnixProtocol(), fd);
                l.path = l.acceptor.local_endpoint().path();
                log::info("listening on " + l.name() + " (from systemd)");
            } else if (sd_is_socket_inet(fd, AF_UNSPEC, SOCK_STREAM, 1, 0) > 0) {
                auto& l = state->tcp_listeners.emplace_back(state->io);
                l.acceptor.assign(sd_is_socket_inet(fd, AF_INET, SOCK_STREAM, 1, 0) > 0 ? Tcp::v4() : Tcp::v6(), fd);
                log::info("listening on " + l.name() + " (from systemd)");
            } else {
                log::warning("ignoring file descriptor " + std::to_string(fd) +
                             " from systemd: not a listening Unix or TCP stream socket");
            }
        }
    }

    bool have_unix(const std::string& path) const {
        for (const auto& l : state->unix_listeners)
            if (l.path == path) return true;
        return false;
    }

    bool have_tcp(const Tcp::endpoint& ep) const {
        for (const auto& l : state->tcp_listeners) {
            error_code ec;
            if (l.acceptor.local_endpoint(ec) == ep && !ec) return true;
        }
        return false;
    }

    void bind_unix(const UnixListenerOptions& o) {
        if (have_unix(o.path)) return;  // systemd already passed it
        auto file = ingest_detail::create_unix_socket(o, asio::socket_base::max_listen_connections);
        auto& l = state->unix_listeners.emplace_back(state->io, o.path);
        l.owns_file = true;  // from here close_listeners() removes the file, even if assign throws
        l.dev = file.dev;
        l.ino = file.ino;
        l.acceptor.assign(UnixProtocol(), file.fd.get());
        file.fd.release();
        log::info("listening on " + l.name());
    }

    void bind_tcp(const TcpListenerOptions& o) {
        const std::string what = "TCP listener " + o.host + " port " + std::to_string(o.port);
        Tcp::resolver resolver(state->io);
        error_code ec;
        const auto results = resolver.resolve(o.host, std::to_string(o.port),
                                              Tcp::resolver::passive | Tcp::resolver::numeric_service, ec);
        if (ec) throw std::runtime_error(what + ": " + ec.message());
        for (const auto& entry : results) {
            const auto ep = entry.endpoint();
            if (have_tcp(ep)) continue;
            auto& l = state->tcp_listeners.emplace_back(state->io);
            l.acceptor.open(ep.protocol(), ec);
            if (!ec) l.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
            // "::" and "0.0.0.0" both resolved (empty host): a dual-stack v6 socket would take
            // the v4 port too and make the second bind fail.
            if (!ec && ep.address().is_v6() && results.size() > 1) l.acceptor.set_option(asio::ip::v6_only(true), ec);
            if (!ec) l.acceptor.bind(ep, ec);
            if (!ec) l.acceptor.listen(asio::socket_base::max_listen_connections, ec);
            if (ec) throw std::runtime_error(what + " (" + endpoint_text(ep) + "): " + ec.message());
            log::info("listening on " + l.name());
        }
    }

    void close_listeners() {
        error_code ignored;
        for (auto& l : state->unix_listeners) {
            l.acceptor.close(ignored);
            l.retry.cancel();
            if (l.owns_file) ingest_detail::remove_unix_socket(l.path, l.dev, l.ino);
            l.owns_file = false;
        }
        for (auto& l : state->tcp_listeners) {
            l.acceptor.close(ignored);
            l.retry.cancel();
        }
    }
};

Ingest::Ingest(asio::io_context& io, IngestOptions options, FrameConsumer& consumer, Metrics& metrics)
    : impl_(std::make_unique<Impl>()) {
    impl_->state = std::make_shared<State>(io, std::move(options), consumer, metrics);
}

Ingest::~Ingest() { stop(); }

void Ingest::start() {
    auto& st = *impl_->state;
    if (st.started) return;
    st.started = true;
    try {
        st.allow = ingest_detail::parse_cidrs(st.options.tcp_allow);
        if (st.options.systemd_sockets) impl_->adopt_systemd_sockets();
        for (const auto& o : st.options.unix_sockets) impl_->bind_unix(o);
        for (const auto& o : st.options.tcp) impl_->bind_tcp(o);
    } catch (...) {
        impl_->close_listeners();
        st.unix_listeners.clear();
        st.tcp_listeners.clear();
        throw;
    }
    for (auto& l : st.unix_listeners) asio::co_spawn(st.io, accept_loop(impl_->state, &l), asio::detached);
    for (auto& l : st.tcp_listeners) asio::co_spawn(st.io, accept_loop(impl_->state, &l), asio::detached);
}

void Ingest::stop() {
    if (!impl_) return;
    auto& st = *impl_->state;
    if (st.stopping) return;
    st.stopping = true;
    impl_->close_listeners();
    error_code ignored;
    for (Connection* c : st.connections) {
        c->watchdog.cancel();
        c->socket.close(ignored);  // the pending read ends; the session logs and cleans up
    }
}

std::size_t Ingest::listener_count() const noexcept {
    std::size_t n = 0;
    for (const auto& l : impl_->state->unix_listeners) n += l.acceptor.is_open();
    for (const auto& l : impl_->state->tcp_listeners) n += l.acceptor.is_open();
    return n;
}

}  // namespace dnstap_collector
