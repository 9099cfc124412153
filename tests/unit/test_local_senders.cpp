// LocalSenders: the CPU waits of the processes sending dnstap, read from schedstat files in a
// directory laid out like /proc, and from this process's own /proc entry.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "dnstap_collector/senders.hpp"

using namespace dnstap_collector;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {
struct FakeProc {
    fs::path root = fs::temp_directory_path() / ("local-senders-" + std::to_string(::getpid()));
    FakeProc() { fs::remove_all(root); }
    ~FakeProc() { fs::remove_all(root); }
    // Thread `tid` of `pid` has run for 1 s and waited `delay_ns` for a CPU in all.
    void thread(int pid, int tid, long long delay_ns) const {
        const auto dir = root / std::to_string(pid) / "task" / std::to_string(tid);
        fs::create_directories(dir);
        std::ofstream(dir / "schedstat") << 1000000000 << ' ' << delay_ns << ' ' << 42 << '\n';
    }
    void exit_thread(int pid, int tid) const { fs::remove_all(root / std::to_string(pid) / "task" / std::to_string(tid)); }
};
}  // namespace

TEST_CASE("cpu_wait_share is the senders' new CPU wait per second of wall time, summed over threads") {
    FakeProc proc;
    proc.thread(100, 100, 5'000'000'000);  // waits from before it connected do not count
    proc.thread(100, 101, 0);
    LocalSenders senders(proc.root);
    senders.add(100);
    const auto t0 = LocalSenders::Clock::now();
    CHECK(senders.cpu_wait_share(t0) == 0);  // starts the count
    proc.thread(100, 100, 5'030'000'000);    // +30 ms
    proc.thread(100, 101, 20'000'000);       // +20 ms
    CHECK(senders.cpu_wait_share(t0 + 100ms) == Approx(0.5));
    CHECK(senders.cpu_wait_share(t0 + 200ms) == Approx(0.0));  // nothing new
}

TEST_CASE("a sender counts while any of its connections is open, and its exited threads do not go negative") {
    FakeProc proc;
    proc.thread(7, 7, 1'000'000);
    proc.thread(7, 8, 9'000'000);
    LocalSenders senders(proc.root);
    CHECK(senders.empty());
    senders.add(7);
    senders.add(7);  // named opens one connection per dnstap-output reopen
    const auto t0 = LocalSenders::Clock::now();
    senders.cpu_wait_share(t0);
    proc.exit_thread(7, 8);  // the total drops by 9 ms: a new base, not a negative wait
    CHECK(senders.cpu_wait_share(t0 + 100ms) == 0);
    proc.thread(7, 7, 11'000'000);
    CHECK(senders.cpu_wait_share(t0 + 200ms) == Approx(0.1));
    senders.remove(7);
    CHECK_FALSE(senders.empty());
    senders.remove(7);
    CHECK(senders.empty());
    senders.add(0);  // TCP peers and unknown pids are not senders here
    CHECK(senders.empty());
}

TEST_CASE("a sender that is gone reads as no wait") {
    FakeProc proc;
    LocalSenders senders(proc.root);
    senders.add(12345);
    CHECK(senders.run_delay_ns(12345) == -1);
    const auto t0 = LocalSenders::Clock::now();
    senders.cpu_wait_share(t0);
    CHECK(senders.cpu_wait_share(t0 + 100ms) == 0);
}

TEST_CASE("the real /proc gives this process's own run delay") {
    LocalSenders senders;
    CHECK(senders.run_delay_ns(static_cast<int>(::getpid())) >= 0);
}
