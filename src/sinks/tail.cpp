// Live tail: formats exchanges only while someone is attached, on the I/O thread's terms.
#include <utility>  // before Boost.Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/network_v4.hpp>
#include <boost/asio/ip/network_v6.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <optional>
#include <list>
#include <ostream>
#include <sstream>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "dnstap_collector/log.hpp"
#include "dnstap_collector/sinks.hpp"

namespace dnstap_collector {

namespace asio = boost::asio;
using stream = asio::local::stream_protocol;

namespace {

constexpr std::size_t max_backlog_bytes = 4 << 20;

struct Item {
    std::string text, json, qname, client, rcode;
};

struct Filter {
    bool json = false;
    std::string suffix, rcode;
    std::optional<asio::ip::network_v4> net4;
    std::optional<asio::ip::network_v6> net6;
    std::string client;  // as given, when not a network

    static Filter parse(const std::string& line) {
        Filter f;
        std::istringstream in(line);
        std::string word;
        while (in >> word) {
            if (word == "json") f.json = true;
            else if (word.starts_with("suffix=")) f.suffix = lowercase_name(word.substr(7));
            else if (word.starts_with("rcode=")) f.rcode = word.substr(6);
            else if (word.starts_with("client=")) {
                f.client = word.substr(7);
                boost::system::error_code ec;
                if (f.client.find('/') != std::string::npos) {
                    auto n4 = asio::ip::make_network_v4(f.client, ec);
                    if (!ec) f.net4 = n4;
                    else if (auto n6 = asio::ip::make_network_v6(f.client, ec); !ec) f.net6 = n6;
                }
            }
        }
        if (f.suffix.ends_with('.') && f.suffix != ".") f.suffix.pop_back();
        return f;
    }

    bool matches(const Item& item) const {
        if (!suffix.empty() && suffix != "." && item.qname != suffix &&
            !(item.qname.size() > suffix.size() && item.qname.ends_with(suffix) &&
              item.qname[item.qname.size() - suffix.size() - 1] == '.'))
            return false;
        if (!rcode.empty() && item.rcode != rcode) return false;
        if (!client.empty()) {
            if (net4 || net6) {
                boost::system::error_code ec;
                auto address = asio::ip::make_address(item.client, ec);
                if (ec) return false;
                if (net4) return address.is_v4() && asio::ip::network_v4(address.to_v4(), 32).is_subnet_of(*net4);
                return address.is_v6() && asio::ip::network_v6(address.to_v6(), 128).is_subnet_of(*net6);
            }
            if (item.client != client) return false;
        }
        return true;
    }
};

struct Session {
    explicit Session(stream::socket s) : socket(std::move(s)), wake(socket.get_executor()) {
        wake.expires_at(asio::steady_timer::time_point::max());
    }
    stream::socket socket;
    asio::steady_timer wake;
    Filter filter;
    bool subscribed = false;
    std::string outbox;
    std::uint64_t dropped = 0;
};

}  // namespace

struct TailSink::Impl : std::enable_shared_from_this<TailSink::Impl> {
    asio::io_context& io;
    std::string path;
    stream::acceptor acceptor;
    std::atomic<int> subscribers{0};
    std::list<std::shared_ptr<Session>> sessions;  // touched on the I/O thread only

    Impl(asio::io_context& i, std::string p) : io(i), path(std::move(p)), acceptor(i) {}

    asio::awaitable<void> listen() {
        auto self = shared_from_this();
        for (;;) {
            boost::system::error_code ec;
            stream::socket socket = co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
            if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
            if (ec) continue;
            auto session = std::make_shared<Session>(std::move(socket));
            sessions.push_back(session);
            asio::co_spawn(io, serve(session), asio::detached);
        }
    }

    asio::awaitable<void> serve(std::shared_ptr<Session> session) {
        auto self = shared_from_this();
        boost::system::error_code ec;
        asio::streambuf request;
        co_await asio::async_read_until(session->socket, request, '\n', asio::redirect_error(asio::use_awaitable, ec));
        if (!ec) {
            std::istream in(&request);
            std::string line;
            std::getline(in, line);
            session->filter = Filter::parse(line);
            session->subscribed = true;
            subscribers.fetch_add(1);
            log::info("tail attached (" + line + ")");
            asio::co_spawn(io, watch_for_close(session), asio::detached);
            while (session->socket.is_open()) {
                if (session->outbox.empty()) {
                    co_await session->wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
                    continue;
                }
                std::string out;
                out.swap(session->outbox);
                if (session->dropped) {
                    out += "# dropped " + std::to_string(session->dropped) + " lines: tail too slow\n";
                    session->dropped = 0;
                }
                co_await asio::async_write(session->socket, asio::buffer(out), asio::redirect_error(asio::use_awaitable, ec));
                if (ec) break;
            }
            subscribers.fetch_sub(1);
            log::info("tail detached");
        }
        session->socket.close(ec);
        sessions.remove(session);
    }

    // A tail client sends nothing after its request: any read completion means it left, so it
    // stops costing formatting at once rather than at the next failed write.
    static asio::awaitable<void> watch_for_close(std::shared_ptr<Session> session) {
        char byte;
        boost::system::error_code ec;
        while (!ec) co_await session->socket.async_read_some(asio::buffer(&byte, 1), asio::redirect_error(asio::use_awaitable, ec));
        session->socket.close(ec);
        session->wake.cancel();
    }

    void deliver(const std::vector<Item>& items) {
        for (auto& session : sessions) {
            if (!session->subscribed) continue;
            for (const Item& item : items) {
                if (!session->filter.matches(item)) continue;
                if (session->outbox.size() >= max_backlog_bytes) {
                    ++session->dropped;
                    continue;
                }
                session->outbox += session->filter.json ? item.json : item.text;
                session->outbox.push_back('\n');
            }
            session->wake.cancel();
        }
    }
};

TailSink::TailSink(asio::io_context& io, std::string socket_path)
    : impl_(std::make_shared<Impl>(io, std::move(socket_path))) {}

TailSink::~TailSink() { stop(); }

void TailSink::start() {
    ::unlink(impl_->path.c_str());
    boost::system::error_code ec;
    const mode_t old_mask = ::umask(0177);  // 0600 from the start: lines show client addresses
    impl_->acceptor.open(stream(), ec);
    if (!ec) impl_->acceptor.bind(stream::endpoint(impl_->path), ec);
    ::umask(old_mask);
    if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) throw std::runtime_error("tail socket " + impl_->path + ": " + ec.message());
    asio::co_spawn(impl_->io, impl_->listen(), asio::detached);
}

// Called on the I/O thread (the stop signal handler) or once the I/O thread has finished.
void TailSink::stop() {
    if (!impl_->acceptor.is_open()) return;
    boost::system::error_code ec;
    impl_->acceptor.close(ec);
    for (auto& session : impl_->sessions) {
        session->socket.close(ec);
        session->wake.cancel();
    }
    ::unlink(impl_->path.c_str());
}

bool TailSink::active() const noexcept { return impl_->subscribers.load(std::memory_order_relaxed) > 0; }

void TailSink::consume(std::vector<Exchange>&& batch) {
    if (!active()) return;
    std::vector<Item> items;
    items.reserve(batch.size());
    for (const Exchange& e : batch) {
        const ExchangeView v(e);
        Item item;
        item.text = format_exchange_text(e);
        item.json = format_exchange_json(e);
        if (v.question && v.question->has_question) item.qname = lowercase_name(v.question->qname);
        item.client = v.first.query_address.to_string();
        if (v.answer) item.rcode = rcode_to_text(v.answer->rcode);
        items.push_back(std::move(item));
    }
    asio::post(impl_->io, [impl = impl_, items = std::move(items)] { impl->deliver(items); });
}

int run_tail(const std::string& socket_path, const std::string& request, std::ostream& out) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::runtime_error("socket: " + std::string(std::strerror(errno)));
    struct Closer { int fd; ~Closer() { ::close(fd); } } closer{fd};
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (socket_path.size() >= sizeof address.sun_path) throw std::runtime_error("tail socket path too long: " + socket_path);
    std::memcpy(address.sun_path, socket_path.c_str(), socket_path.size() + 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0)
        throw std::runtime_error("cannot attach to " + socket_path + ": " + std::strerror(errno) +
                                 " (is dnstap-collector serve running with --tail-socket there?)");
    const std::string line = request + "\n";
    if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()))
        throw std::runtime_error("cannot send the tail request: " + std::string(std::strerror(errno)));
    char buf[65536];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        out.write(buf, n);
        out.flush();
        if (!out) return 1;
    }
    return 0;
}

}  // namespace dnstap_collector
