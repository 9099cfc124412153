// Ingest over real sockets: the io_context runs on its own thread, the test plays the sender
// with plain blocking sockets.
#include <utility>  // before Boost.Asio (GCC 12 + Boost 1.74)

#include <catch2/catch.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <arpa/inet.h>
#include <grp.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dnstap_collector/frame.hpp"
#include "dnstap_collector/ingest.hpp"
#include "dnstap_collector/metrics.hpp"
#include "ingest/socket_setup.hpp"

using namespace dnstap_collector;
namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

namespace {

struct TempDir {
    fs::path path;
    TempDir() {
        std::string tmpl = (fs::temp_directory_path() / "ingest_test.XXXXXX").string();
        if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

struct Collect : FrameConsumer {
    std::mutex mutex;
    std::vector<std::string> frames;
    bool offer(std::span<const std::uint8_t> f) override {
        std::lock_guard lock(mutex);
        frames.emplace_back(f.begin(), f.end());
        return true;
    }
    std::vector<std::string> snapshot() {
        std::lock_guard lock(mutex);
        return frames;
    }
};

bool eventually(const std::function<bool()>& condition) {
    for (int i = 0; i < 250; ++i) {
        if (condition()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return condition();
}

// Ingest running on a background io thread; stop() is posted to that thread as the contract asks.
struct Running {
    boost::asio::io_context io{1};
    Ingest ingest;
    std::thread thread;
    Running(IngestOptions o, FrameConsumer& c, Metrics& m) : ingest(io, std::move(o), c, m) {
        ingest.start();
        thread = std::thread([this] { io.run(); });
    }
    void stop() {
        if (!thread.joinable()) return;
        boost::asio::post(io, [this] { ingest.stop(); });
        thread.join();  // returns only once every session and listener has ended
    }
    ~Running() { stop(); }
};

class Client {
public:
    explicit Client(const fs::path& path) {
        fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
        connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
        set_timeout();
    }
    explicit Client(std::uint16_t port) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
        set_timeout();
    }
    ~Client() { ::close(fd_); }
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;
    bool connected() const { return connected_; }
    void send(const Bytes& b) const {
        // MSG_NOSIGNAL: the server may already have closed on us, which is what some tests check.
        [[maybe_unused]] auto n = ::send(fd_, b.data(), b.size(), MSG_NOSIGNAL);
    }
    // Reads exactly n bytes; fewer means EOF or timeout.
    Bytes receive(std::size_t n) const {
        Bytes out(n);
        std::size_t got = 0;
        while (got < n) {
            const auto r = ::recv(fd_, out.data() + got, n - got, 0);
            if (r <= 0) break;
            got += static_cast<std::size_t>(r);
        }
        out.resize(got);
        return out;
    }
    bool closed_by_peer() const {
        std::uint8_t b;
        return ::recv(fd_, &b, 1, 0) == 0;
    }
    void shutdown_write() const { ::shutdown(fd_, SHUT_WR); }

private:
    void set_timeout() const {
        timeval tv{5, 0};
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    int fd_ = -1;
    bool connected_ = false;
};

Bytes frame(const std::string& payload) {
    Bytes out;
    append_data_frame(out, {reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size()});
    return out;
}

Bytes cat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

IngestOptions unix_options(const fs::path& path) {
    IngestOptions o;
    o.unix_sockets.push_back({path.string(), 0660, ""});
    o.systemd_sockets = false;
    return o;
}

std::uint16_t free_tcp_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

std::uint64_t dropped(const Metrics& m, DropReason r) { return m.dropped[static_cast<std::size_t>(r)].load(); }

}  // namespace

TEST_CASE("ingest: a bidirectional sender gets ACCEPT and FINISH and its frames reach the consumer") {
    TempDir dir;
    const auto sock = dir.path / "dnstap.sock";
    Metrics metrics;
    Collect consumer;
    Running run(unix_options(sock), consumer, metrics);
    CHECK(run.ingest.listener_count() == 1);

    Client client(sock);
    REQUIRE(client.connected());
    client.send(encode_control(ControlType::ready));
    const auto accept = encode_control(ControlType::accept);
    CHECK(client.receive(accept.size()) == accept);
    client.send(cat({encode_control(ControlType::start), frame("one"), frame("two"), encode_control(ControlType::stop)}));
    const auto finish = encode_control(ControlType::finish);
    CHECK(client.receive(finish.size()) == finish);
    CHECK(client.closed_by_peer());

    CHECK(eventually([&] { return metrics.connections_active == 0; }));
    CHECK(consumer.snapshot() == std::vector<std::string>{"one", "two"});
    CHECK(metrics.frames_received == 2);
    CHECK(metrics.bytes_received == 6);
    CHECK(metrics.connections_total == 1);
    CHECK(metrics.connections_rejected == 0);
}

TEST_CASE("ingest: a unidirectional sender is read until EOF without replies") {
    TempDir dir;
    const auto sock = dir.path / "dnstap.sock";
    Metrics metrics;
    Collect consumer;
    Running run(unix_options(sock), consumer, metrics);

    Client client(sock);
    client.send(cat({encode_control(ControlType::start), frame("a"), frame("b"), frame("c")}));
    client.shutdown_write();
    CHECK(client.closed_by_peer());  // nothing was written back
    CHECK(eventually([&] { return consumer.snapshot().size() == 3; }));
    CHECK(metrics.dropped_total() == 0);
}

TEST_CASE("ingest: oversized frames and a frame cut by EOF are counted as received and dropped") {
    TempDir dir;
    const auto sock = dir.path / "dnstap.sock";
    Metrics metrics;
    Collect consumer;
    auto options = unix_options(sock);
    options.max_frame_size = 10;
    Running run(options, consumer, metrics);

    Client client(sock);
    auto cut = frame("12345678");  // fits the limit, but only 3 of its 8 bytes arrive
    cut.resize(7);
    client.send(cat({encode_control(ControlType::start), frame(std::string(11, 'x')), frame("ok"), cut}));
    client.shutdown_write();
    CHECK(client.closed_by_peer());
    CHECK(eventually([&] { return dropped(metrics, DropReason::partial_frame) == 1; }));
    CHECK(dropped(metrics, DropReason::frame_too_large) == 1);
    CHECK(consumer.snapshot() == std::vector<std::string>{"ok"});
    // Received and then dropped, so frames_received == stored + dropped holds.
    CHECK(metrics.frames_received == 3);
    CHECK(metrics.frames_received == consumer.snapshot().size() + metrics.dropped_total());
}

TEST_CASE("ingest: a protocol error closes only that connection") {
    TempDir dir;
    const auto sock = dir.path / "dnstap.sock";
    Metrics metrics;
    Collect consumer;
    Running run(unix_options(sock), consumer, metrics);

    Client good(sock), bad(sock);
    good.send(encode_control(ControlType::start));
    bad.send(encode_control(ControlType::ready, "protobuf:something.Else"));
    CHECK(bad.closed_by_peer());
    good.send(frame("still here"));
    CHECK(eventually([&] { return consumer.snapshot().size() == 1; }));
    CHECK(metrics.connections_rejected == 1);
    CHECK(metrics.connections_active == 1);
}

TEST_CASE("ingest: a connection that never sends READY or START is closed after the handshake timeout") {
    TempDir dir;
    const auto sock = dir.path / "dnstap.sock";
    Metrics metrics;
    Collect consumer;
    auto options = unix_options(sock);
    options.handshake_timeout = std::chrono::seconds(1);
    Running run(options, consumer, metrics);

    Client silent(sock), ready_only(sock), started(sock);
    ready_only.send(encode_control(ControlType::ready));
    started.send(encode_control(ControlType::start));
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(silent.closed_by_peer());
    CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(500));
    CHECK(ready_only.receive(encode_control(ControlType::accept).size()).size() > 0);
    CHECK(ready_only.closed_by_peer());
    CHECK(eventually([&] { return metrics.connections_rejected == 2; }));
    started.send(frame("late but fine"));
    CHECK(eventually([&] { return consumer.snapshot().size() == 1; }));
}

TEST_CASE("ingest: stop() closes open sessions and removes the socket file") {
    TempDir dir;
    const auto sock = dir.path / "dnstap.sock";
    Metrics metrics;
    Collect consumer;
    Running run(unix_options(sock), consumer, metrics);
    Client client(sock);
    client.send(cat({encode_control(ControlType::start), frame("x")}));
    // Wait until the server has read everything: closing with unread input would reset.
    REQUIRE(eventually([&] { return consumer.snapshot().size() == 1; }));
    run.stop();  // joins the io thread: proves nothing is left running
    CHECK(client.closed_by_peer());
    CHECK_FALSE(fs::exists(sock));
    CHECK(metrics.connections_active == 0);
}

TEST_CASE("ingest: the socket file has the configured mode and group") {
    TempDir dir;
    const auto sock = dir.path / "dnstap.sock";
    Metrics metrics;
    Collect consumer;
    auto options = unix_options(sock);
    options.unix_sockets[0].mode = 0620;
    Running run(options, consumer, metrics);
    struct stat st{};
    REQUIRE(::stat(sock.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 07777) == 0620);
    if (const group* g = ::getgrnam("bind"); g && ::geteuid() == 0) CHECK(st.st_gid == g->gr_gid);
    // No temporary name is left behind.
    CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
}

TEST_CASE("ingest: a stale socket file is replaced, a live one is refused") {
    TempDir dir;
    const auto sock = dir.path / "dnstap.sock";
    {
        ingest_detail::UniqueFd stale(::socket(AF_UNIX, SOCK_STREAM, 0));
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, sock.c_str(), sizeof a.sun_path - 1);
        REQUIRE(::bind(stale.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    }  // closed without unlink: what a crash leaves
    Metrics metrics;
    Collect consumer;
    Running run(unix_options(sock), consumer, metrics);
    Client client(sock);
    CHECK(client.connected());

    boost::asio::io_context io2;
    Ingest second(io2, unix_options(sock), consumer, metrics);
    CHECK_THROWS_WITH(second.start(), Catch::Contains("in use by a running process"));
    CHECK(fs::exists(sock));  // the failed start must not remove the live socket

    const auto regular = dir.path / "file";
    { std::ofstream(regular.string()) << "x"; }
    Ingest third(io2, unix_options(regular), consumer, metrics);
    CHECK_THROWS_WITH(third.start(), Catch::Contains("not a socket"));
}

TEST_CASE("ingest: TCP connections outside tcp_allow are refused and counted") {
    const auto port = free_tcp_port();
    Metrics metrics;
    Collect consumer;
    IngestOptions options;
    options.systemd_sockets = false;
    options.tcp.push_back({"127.0.0.1", port});
    options.tcp_allow = {"10.0.0.0/8", "::1/128"};
    {
        Running run(options, consumer, metrics);
        Client client(port);
        REQUIRE(client.connected());
        CHECK(client.closed_by_peer());
        CHECK(eventually([&] { return metrics.connections_rejected == 1; }));
        CHECK(metrics.connections_total == 0);
    }
    options.tcp_allow = {"127.0.0.0/8"};
    Running run(options, consumer, metrics);
    Client client(port);
    client.send(cat({encode_control(ControlType::start), frame("tcp")}));
    CHECK(eventually([&] { return consumer.snapshot().size() == 1; }));
}

TEST_CASE("ingest: tcp_allow entries parse as CIDRs") {
    using ingest_detail::parse_cidr;
    const auto v4 = [](const char* s) {
        std::uint8_t b[4];
        ::inet_pton(AF_INET, s, b);
        return std::vector<std::uint8_t>(b, b + 4);
    };
    const auto net = parse_cidr("192.168.10.77/20");
    CHECK(net.contains(AF_INET, v4("192.168.0.1").data()));
    CHECK(net.contains(AF_INET, v4("192.168.15.255").data()));
    CHECK_FALSE(net.contains(AF_INET, v4("192.168.16.0").data()));
    CHECK(parse_cidr("0.0.0.0/0").contains(AF_INET, v4("8.8.8.8").data()));
    CHECK(parse_cidr("10.1.2.3").contains(AF_INET, v4("10.1.2.3").data()));
    CHECK_FALSE(parse_cidr("10.1.2.3").contains(AF_INET, v4("10.1.2.4").data()));

    std::uint8_t v6[16];
    ::inet_pton(AF_INET6, "2001:db8:1::5", v6);
    CHECK(parse_cidr("2001:db8::/32").contains(AF_INET6, v6));
    CHECK_FALSE(parse_cidr("2001:db9::/32").contains(AF_INET6, v6));
    CHECK_FALSE(parse_cidr("2001:db8::/32").contains(AF_INET, v6));

    for (const char* bad : {"", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/8x", "host.example", "10.0.0.0/-1"})
        CHECK_THROWS_AS(parse_cidr(bad), std::runtime_error);
}
