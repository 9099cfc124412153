// loadgen: a Frame Streams load generator for dnstap receivers.
//
// Reads the data frames of a capture file (Frame Streams, e.g. written by named or
// fstrm_capture) and sends them in a loop over N connections (one thread each, plain
// blocking POSIX sockets, Unix or TCP), with the bidirectional handshake:
//   READY(protobuf:dnstap.Dnstap) -> wait ACCEPT -> START -> data frames -> STOP -> wait FINISH.
// Data frames go out pre-encoded, in large batched write()s (frame aligned, --batch bytes).
// Every write() is timed: the longest one is the worst stall the receiver imposed on us.
//
//   loadgen -r CAPTURE (-u SOCK | -a HOST:PORT) [-c CONNS] (-n FRAMES | -d SECONDS) [--batch BYTES]
//   loadgen -r CAPTURE --write-file OUT -n FRAMES      big Frame Streams file for `import`
//   loadgen --count FILE...                            count the data frames of files
//
// Output: a human line, and a machine line "loadgen: frames=... seconds=... fps=...
// max_stall_ms=... conns=..." (seconds = first START .. last FINISH).
#include "dnstap_collector/frame.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace dnstap_collector;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
    std::string capture;
    std::string unix_path;
    std::string tcp_host;
    int tcp_port = 0;
    unsigned conns = 1;
    std::uint64_t frames = 0;  // total over all connections
    double duration = 0;
    std::size_t batch = 256 * 1024;
    std::string write_file;
    std::vector<std::string> count_files;
    double finish_timeout = 30;
};

[[noreturn]] void usage(const char* msg) {
    std::fprintf(stderr,
                 "loadgen: %s\n"
                 "usage: loadgen -r CAPTURE (-u SOCK | -a HOST:PORT) [-c CONNS] (-n FRAMES | -d SECONDS) [--batch BYTES]\n"
                 "       loadgen -r CAPTURE --write-file OUT -n FRAMES\n"
                 "       loadgen --count FILE...\n",
                 msg);
    std::exit(2);
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage(("missing value for " + a).c_str());
            return argv[++i];
        };
        if (a == "-r") o.capture = value();
        else if (a == "-u") o.unix_path = value();
        else if (a == "-a") {
            std::string v = value();
            auto colon = v.rfind(':');
            if (colon == std::string::npos) usage("-a wants HOST:PORT");
            o.tcp_host = v.substr(0, colon);
            o.tcp_port = std::atoi(v.c_str() + colon + 1);
        } else if (a == "-c") o.conns = static_cast<unsigned>(std::max(1, std::atoi(value().c_str())));
        else if (a == "-n") o.frames = std::strtoull(value().c_str(), nullptr, 10);
        else if (a == "-d") o.duration = std::atof(value().c_str());
        else if (a == "--batch") o.batch = std::strtoull(value().c_str(), nullptr, 10);
        else if (a == "--write-file") o.write_file = value();
        else if (a == "--finish-timeout") o.finish_timeout = std::atof(value().c_str());
        else if (a == "--count") {
            while (i + 1 < argc) o.count_files.emplace_back(argv[++i]);
        } else if (a == "-h" || a == "--help") usage("help");
        else usage(("unknown argument " + a).c_str());
    }
    return o;
}

// The capture's frames, pre-encoded back to back, cut into frame-aligned chunks.
struct Corpus {
    std::vector<std::uint8_t> bytes;           // length-prefixed data frames
    std::vector<std::size_t> frame_offset;     // start of frame i in bytes; plus end sentinel
    struct Chunk { std::size_t begin, end, first_frame, frames; };
    std::vector<Chunk> chunks;
};

Corpus load_corpus(const std::string& path, std::size_t batch) {
    Corpus c;
    auto r = read_frame_file(path, [&](std::span<const std::uint8_t> f) {
        c.frame_offset.push_back(c.bytes.size());
        // append_data_frame reserves exactly what it needs on every call, which makes a long
        // run of appends quadratic; grow geometrically here so its reserve is a no-op.
        const std::size_t need = c.bytes.size() + 4 + f.size();
        if (need > c.bytes.capacity()) c.bytes.reserve(std::max(need, 2 * c.bytes.capacity()));
        append_data_frame(c.bytes, f);
    });
    if (!r.error.empty()) std::fprintf(stderr, "loadgen: warning: %s (using the %llu frames read)\n",
                                       r.error.c_str(), static_cast<unsigned long long>(r.frames));
    if (c.frame_offset.empty()) throw std::runtime_error(path + ": no data frames");
    c.frame_offset.push_back(c.bytes.size());
    const std::size_t n = c.frame_offset.size() - 1;
    std::size_t first = 0;
    while (first < n) {
        std::size_t last = first + 1;
        while (last < n && c.frame_offset[last + 1] - c.frame_offset[first] <= batch) ++last;
        c.chunks.push_back({c.frame_offset[first], c.frame_offset[last], first, last - first});
        first = last;
    }
    return c;
}

int connect_to(const Options& o) {
    if (!o.unix_path.empty()) {
        int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        if (o.unix_path.size() >= sizeof sa.sun_path) throw std::runtime_error("socket path too long");
        std::memcpy(sa.sun_path, o.unix_path.c_str(), o.unix_path.size() + 1);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0)
            throw std::runtime_error("connect " + o.unix_path + ": " + std::strerror(errno));
        return fd;
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const std::string port = std::to_string(o.tcp_port);
    if (int e = ::getaddrinfo(o.tcp_host.c_str(), port.c_str(), &hints, &res); e != 0)
        throw std::runtime_error("getaddrinfo " + o.tcp_host + ": " + gai_strerror(e));
    int fd = -1;
    for (auto* p = res; p; p = p->ai_next) {
        fd = ::socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
        if (fd < 0) continue;
        if (::connect(fd, p->ai_addr, p->ai_addrlen) == 0) break;
        ::close(fd);
        fd = -1;
    }
    ::freeaddrinfo(res);
    if (fd < 0) throw std::runtime_error("connect " + o.tcp_host + ":" + port + " failed");
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

struct ConnResult {
    std::uint64_t frames = 0;
    double max_stall_ms = 0;
    std::uint64_t writes = 0;
    Clock::time_point started{}, finished{};
    std::string error;
};

// Timed blocking write of all of buf; updates the longest single write() call.
void write_all(int fd, const std::uint8_t* p, std::size_t n, ConnResult& r) {
    while (n > 0) {
        const auto t0 = Clock::now();
        const ssize_t w = ::write(fd, p, n);
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (ms > r.max_stall_ms) r.max_stall_ms = ms;
        ++r.writes;
        if (w < 0) {
            if (errno == EINTR) continue;
            throw std::runtime_error(std::string("write: ") + std::strerror(errno));
        }
        p += w;
        n -= static_cast<std::size_t>(w);
    }
}

// Reads one control frame (escape, length, body) within timeout; returns its type.
std::uint32_t read_control(int fd, double timeout_s) {
    std::vector<std::uint8_t> buf;
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    auto need = [&](std::size_t n) {
        while (buf.size() < n) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
            if (left <= 0) throw std::runtime_error("timeout waiting for a control frame");
            pollfd pfd{fd, POLLIN, 0};
            int pr = ::poll(&pfd, 1, static_cast<int>(left));
            if (pr < 0 && errno == EINTR) continue;
            if (pr <= 0) continue;
            std::uint8_t tmp[512];
            const ssize_t got = ::read(fd, tmp, std::min(sizeof tmp, n - buf.size()));
            if (got < 0) {
                if (errno == EINTR) continue;
                throw std::runtime_error(std::string("read: ") + std::strerror(errno));
            }
            if (got == 0) throw std::runtime_error("receiver closed the connection before the control frame");
            buf.insert(buf.end(), tmp, tmp + got);
        }
    };
    auto be32 = [&](std::size_t at) {
        return (std::uint32_t{buf[at]} << 24) | (std::uint32_t{buf[at + 1]} << 16) |
               (std::uint32_t{buf[at + 2]} << 8) | std::uint32_t{buf[at + 3]};
    };
    need(8);
    if (be32(0) != 0) throw std::runtime_error("expected a control frame, got data");
    const std::uint32_t len = be32(4);
    if (len < 4 || len > max_control_frame) throw std::runtime_error("bad control frame length");
    need(8 + len);
    return be32(8);
}

// Each connection starts its data phase as soon as its handshake completes (some receivers,
// e.g. golang-dnstap, only answer one connection's READY at a time; a barrier would stall).
void run_connection(const Options& o, const Corpus& c, std::uint64_t my_frames, Clock::time_point end_time,
                    ConnResult& r) {
    int fd = -1;
    try {
        fd = connect_to(o);
        auto ready_frame = encode_control(ControlType::ready);
        write_all(fd, ready_frame.data(), ready_frame.size(), r);
        if (read_control(fd, o.duration > 0 ? o.duration + o.finish_timeout : 300.0) != static_cast<std::uint32_t>(ControlType::accept))
            throw std::runtime_error("receiver did not answer READY with ACCEPT");
        r.max_stall_ms = 0;  // handshake excluded from the stall figure
        r.writes = 0;
        r.started = Clock::now();
        auto start = encode_control(ControlType::start);
        write_all(fd, start.data(), start.size(), r);

        const bool by_count = o.frames > 0;
        std::size_t chunk = 0;
        std::uint64_t iter = 0;
        for (;;) {
            const auto& ch = c.chunks[chunk];
            if (by_count) {
                const std::uint64_t left = my_frames - r.frames;
                if (left == 0) break;
                if (left < ch.frames) {
                    const std::size_t end = c.frame_offset[ch.first_frame + left];
                    write_all(fd, c.bytes.data() + ch.begin, end - ch.begin, r);
                    r.frames += left;
                    break;
                }
            } else if ((++iter & 7) == 0 && Clock::now() >= end_time) {
                break;
            }
            write_all(fd, c.bytes.data() + ch.begin, ch.end - ch.begin, r);
            r.frames += ch.frames;
            if (++chunk == c.chunks.size()) chunk = 0;
        }
        auto stop = encode_control(ControlType::stop);
        write_all(fd, stop.data(), stop.size(), r);
        const std::uint32_t t = read_control(fd, o.finish_timeout);
        if (t != static_cast<std::uint32_t>(ControlType::finish))
            throw std::runtime_error("receiver answered STOP with control type " + std::to_string(t));
        r.finished = Clock::now();
    } catch (const std::exception& e) {
        r.error = e.what();
        r.finished = Clock::now();
    }
    if (fd >= 0) ::close(fd);
}

int write_file(const Options& o, const Corpus& c) {
    if (o.frames == 0) usage("--write-file needs -n FRAMES");
    int fd = ::open(o.write_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error(o.write_file + ": " + std::strerror(errno));
    ConnResult r;
    auto start = encode_control(ControlType::start);
    write_all(fd, start.data(), start.size(), r);
    const std::size_t n = c.frame_offset.size() - 1;
    std::uint64_t left = o.frames;
    while (left >= n) {
        write_all(fd, c.bytes.data(), c.bytes.size(), r);
        left -= n;
    }
    if (left) write_all(fd, c.bytes.data(), c.frame_offset[left], r);
    auto stop = encode_control(ControlType::stop);
    write_all(fd, stop.data(), stop.size(), r);
    ::close(fd);
    std::printf("loadgen: wrote %llu frames to %s\n", static_cast<unsigned long long>(o.frames), o.write_file.c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);
    try {
        Options o = parse(argc, argv);
        if (!o.count_files.empty()) {
            std::uint64_t total = 0;
            int status = 0;
            for (const auto& f : o.count_files) {
                auto r = read_frame_file(f, [](std::span<const std::uint8_t>) {});
                // A receiver killed mid-write may leave a partial last frame: count the whole ones.
                if (!r.error.empty()) std::fprintf(stderr, "loadgen: %s\n", r.error.c_str());
                total += r.frames;
            }
            std::printf("frames=%llu\n", static_cast<unsigned long long>(total));
            return status;
        }
        if (o.capture.empty()) usage("-r CAPTURE is required");
        const Corpus c = load_corpus(o.capture, o.batch);
        if (!o.write_file.empty()) return write_file(o, c);
        if (o.unix_path.empty() && o.tcp_host.empty()) usage("give -u SOCK or -a HOST:PORT");
        if ((o.frames == 0) == (o.duration <= 0)) usage("give exactly one of -n FRAMES and -d SECONDS");

        std::vector<ConnResult> results(o.conns);
        std::vector<std::thread> threads;
        const Clock::time_point launch = Clock::now();
        const Clock::time_point end_time =
            launch + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.duration));
        for (unsigned i = 0; i < o.conns; ++i) {
            const std::uint64_t mine = o.frames / o.conns + (i < o.frames % o.conns ? 1 : 0);
            threads.emplace_back([&, i, mine] { run_connection(o, c, mine, end_time, results[i]); });
        }
        for (auto& t : threads) t.join();

        std::uint64_t frames = 0;
        double stall = 0;
        Clock::time_point go = Clock::time_point::max(), last = launch;
        for (const auto& r : results)
            if (r.started != Clock::time_point{}) go = std::min(go, r.started);
        if (go == Clock::time_point::max()) go = launch;
        int status = 0;
        for (unsigned i = 0; i < o.conns; ++i) {
            const auto& r = results[i];
            frames += r.frames;
            stall = std::max(stall, r.max_stall_ms);
            last = std::max(last, r.finished);
            if (!r.error.empty()) {
                std::fprintf(stderr, "loadgen: connection %u: %s (after %llu frames)\n", i, r.error.c_str(),
                             static_cast<unsigned long long>(r.frames));
                status = 1;
            }
        }
        const double seconds = std::chrono::duration<double>(last - go).count();
        const double fps = seconds > 0 ? static_cast<double>(frames) / seconds : 0;
        std::printf("loadgen: sent %llu frames in %.3f s over %u connection(s): %.0f frames/s, longest write() %.2f ms\n",
                    static_cast<unsigned long long>(frames), seconds, o.conns, fps, stall);
        std::printf("loadgen: frames=%llu seconds=%.3f fps=%.0f max_stall_ms=%.2f conns=%u errors=%d\n",
                    static_cast<unsigned long long>(frames), seconds, fps, stall, o.conns, status);
        return status;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "loadgen: %s\n", e.what());
        return 1;
    }
}
