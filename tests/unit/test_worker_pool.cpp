// WorkerPool under concurrency: several producer threads offer real dnstap frames (captured
// from named, tests/fuzz/corpus/fuzz_dnstap_decode/) while the workers decode, pair and hand
// batches to a sink. Every message must come out exactly once or be counted as dropped:
// frames offered == messages stored + dropped. Meant to be run under TSan as well
// (build-tsan, -DDNSTAP_TSAN=ON): "[worker_pool]".
#include <catch2/catch.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "dnstap.pb.h"
#include "dnstap_collector/decode.hpp"
#include "dnstap_collector/metrics.hpp"
#include "dnstap_collector/pipeline.hpp"
#include "dnstap_collector/queue.hpp"
#include "dnstap_collector/sinks.hpp"

using namespace dnstap_collector;
namespace fs = std::filesystem;

namespace {

using Frame = std::vector<std::uint8_t>;

// The real frames of the fuzz seed corpus, in name order (deterministic).
std::vector<dnstap::Dnstap> corpus_messages() {
    const fs::path dir = fs::path(__FILE__).parent_path().parent_path() / "fuzz" / "corpus" / "fuzz_dnstap_decode";
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    std::vector<dnstap::Dnstap> out;
    for (const auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        const std::string bytes{std::istreambuf_iterator<char>(in), {}};
        dnstap::Dnstap d;
        if (d.ParseFromString(bytes) && d.type() == dnstap::Dnstap_Type_MESSAGE) out.push_back(std::move(d));
    }
    return out;
}

// `extra` carries a unique tag per message so the test can tell which ones came out; the
// identity is per producer and round, so each replay pairs like the original capture.
Frame tagged(dnstap::Dnstap d, const std::string& identity, const std::string& tag) {
    d.set_identity(identity);
    d.set_extra(tag);
    std::string s;
    REQUIRE(d.SerializeToString(&s));
    return {s.begin(), s.end()};
}

class CollectingSink : public ExchangeSink {
public:
    void consume(std::vector<Exchange>&& batch) override {
        std::lock_guard lock(mutex_);
        for (auto& e : batch) {
            if (e.query) ++seen_[e.query->extra];
            if (e.response) ++seen_[e.response->extra];
            if (e.query && e.response) ++pairs_;
        }
        ++batches_;
    }
    std::map<std::string, int> seen() const {
        std::lock_guard lock(mutex_);
        return seen_;
    }
    std::uint64_t pairs() const {
        std::lock_guard lock(mutex_);
        return pairs_;
    }

private:
    mutable std::mutex mutex_;
    std::map<std::string, int> seen_;
    std::uint64_t pairs_ = 0;
    std::uint64_t batches_ = 0;
};

struct Run {
    std::map<std::string, int> accepted;  // tags of frames the pool took
    std::uint64_t offered = 0;
    std::uint64_t garbage = 0;  // non-protobuf frames the pool accepted (offer() may refuse some)
};

// `producers` threads each replay the corpus `rounds` times; producer 0 uses push_wait (as
// `import` does), the others offer() and count what was refused. Every 50th frame is
// followed by a frame that is not protobuf (dropped as decode_error).
Run produce(WorkerPool& pool, Metrics& metrics, const std::vector<dnstap::Dnstap>& messages, int producers,
            int rounds) {
    std::vector<Run> runs(static_cast<std::size_t>(producers));
    // Frames are made here, on the test's thread: Catch's assertions are not thread-safe.
    std::vector<std::vector<std::pair<std::string, Frame>>> inputs(static_cast<std::size_t>(producers));
    for (int p = 0; p < producers; ++p) {
        for (int r = 0; r < rounds; ++r) {
            const std::string identity = "p" + std::to_string(p) + "-r" + std::to_string(r);
            for (std::size_t i = 0; i < messages.size(); ++i) {
                const std::string tag = identity + "-" + std::to_string(i);
                inputs[static_cast<std::size_t>(p)].emplace_back(tag, tagged(messages[i], identity, tag));
            }
        }
    }
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
            Run& run = runs[static_cast<std::size_t>(p)];
            const auto& frames = inputs[static_cast<std::size_t>(p)];
            std::size_t n = 0;
            for (auto& [tag, frame] : frames) {
                metrics.frames_received.fetch_add(1, std::memory_order_relaxed);
                ++run.offered;
                if (p == 0) {
                    pool.push_wait(frame);
                    ++run.accepted[tag];
                } else if (pool.offer(frame)) {
                    ++run.accepted[tag];
                }
                if (++n % 50 == 0) {
                    const Frame junk = {0xff, 0xff, 0xff, 0x01, 0x02};
                    metrics.frames_received.fetch_add(1, std::memory_order_relaxed);
                    ++run.offered;
                    if (p == 0) {
                        pool.push_wait(junk);
                        ++run.garbage;
                    } else if (pool.offer(junk)) {
                        ++run.garbage;
                    }
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    Run all;
    for (auto& r : runs) {
        all.offered += r.offered;
        all.garbage += r.garbage;
        for (auto& [tag, n] : r.accepted) all.accepted[tag] += n;
    }
    return all;
}

void check_exactly_once(const Run& run, const CollectingSink& sink, const Metrics& metrics) {
    const auto seen = sink.seen();
    std::uint64_t stored = 0;
    std::size_t duplicated = 0, unexpected = 0, missing = 0;
    for (const auto& [tag, n] : seen) {
        stored += static_cast<std::uint64_t>(n);
        if (n != 1) ++duplicated;
        if (!run.accepted.count(tag)) ++unexpected;
    }
    for (const auto& [tag, n] : run.accepted)
        if (!seen.count(tag)) ++missing;
    CHECK(duplicated == 0);
    CHECK(unexpected == 0);
    CHECK(missing == 0);
    CHECK(seen.size() == run.accepted.size());
    // The accounting invariant of metrics.hpp, with "stored" = what reached the sink.
    INFO(metrics.summary());
    CHECK(metrics.frames_received.load() == run.offered);
    CHECK(metrics.frames_received.load() == stored + metrics.dropped_total());
    CHECK(metrics.dropped[static_cast<std::size_t>(DropReason::decode_error)].load() == run.garbage);
    CHECK(metrics.messages_decoded.load() == stored);
}

}  // namespace

TEST_CASE("worker pool: frames from several producers come out exactly once", "[worker_pool]") {
    const auto messages = corpus_messages();
    REQUIRE(messages.size() >= 50);

    const unsigned workers = GENERATE(1u, 3u);
    const std::size_t queue_frames = GENERATE(std::size_t{64}, std::size_t{1} << 16);
    CAPTURE(workers, queue_frames);

    Metrics metrics;
    CollectingSink sink;
    PipelineOptions options;
    options.workers = workers;
    options.queue_frames = queue_frames;
    Run run;
    {
        WorkerPool pool(options, sink, metrics);
        REQUIRE(pool.worker_count() == workers);
        run = produce(pool, metrics, messages, 4, 6);
        pool.drain_and_stop();
        CHECK(pool.queued() == 0);
    }
    check_exactly_once(run, sink, metrics);
    if (queue_frames > 1024) {
        // Nothing dropped for room: every frame accepted, so the replays pair as in the capture.
        CHECK(metrics.dropped[static_cast<std::size_t>(DropReason::queue_full)].load() == 0);
        CHECK(sink.pairs() > 0);
        CHECK(metrics.pairs_matched.load() == sink.pairs());
    }
}

TEST_CASE("worker pool: destruction without drain_and_stop still delivers everything", "[worker_pool]") {
    const auto messages = corpus_messages();
    Metrics metrics;
    CollectingSink sink;
    PipelineOptions options;
    options.workers = 2;
    Run run;
    {
        WorkerPool pool(options, sink, metrics);
        run = produce(pool, metrics, messages, 3, 2);
    }
    check_exactly_once(run, sink, metrics);
}

namespace {

// Holds the worker inside consume() until released, so the queue in front of it fills up.
class BlockingSink : public ExchangeSink {
public:
    void consume(std::vector<Exchange>&& batch) override {
        std::unique_lock lock(mutex_);
        entered_ = true;
        release_cv_.wait(lock, [&] { return released_; });
        for (const auto& e : batch) messages_ += e.message_count();
    }
    bool entered() const {
        std::lock_guard lock(mutex_);
        return entered_;
    }
    void release() {
        { std::lock_guard lock(mutex_); released_ = true; }
        release_cv_.notify_all();
    }
    std::uint64_t messages() const {
        std::lock_guard lock(mutex_);
        return messages_;
    }

private:
    mutable std::mutex mutex_;
    std::condition_variable release_cv_;
    bool entered_ = false, released_ = false;
    std::uint64_t messages_ = 0;
};

// Fills the one worker's pipeline (the worker blocked in the sink) and offers `frame` `n` times
// in one offer_all(); returns how many of those were accepted and how many dropped.
std::pair<std::uint64_t, std::uint64_t> offer_to_blocked_worker(PipelineOptions options, const std::vector<dnstap::Dnstap>& messages,
                                      const Frame& frame, std::size_t n, Metrics& metrics, BlockingSink& sink) {
    options.workers = 1;
    WorkerPool pool(options, sink, metrics);
    // Replays of the capture complete pairs, so the worker reaches the sink and stays there.
    for (int round = 0; !sink.entered(); ++round) {
        REQUIRE(round < 1000);
        for (std::size_t i = 0; i < messages.size(); ++i) {
            const Frame f = tagged(messages[i], "warm-up-" + std::to_string(round), std::to_string(i));
            metrics.frames_received.fetch_add(1);
            pool.offer(f);
        }
        // One round at a time: the worker gathers frames for up to 50 ms before taking them,
        // and rounds offered meanwhile would be left in the queue, holding room.
        for (int wait = 0; wait < 300 && !sink.entered(); ++wait) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    auto& queue_full = metrics.dropped[static_cast<std::size_t>(DropReason::queue_full)];
    const std::uint64_t accepted_before = metrics.frames_accepted.load(), dropped_before = queue_full.load();
    std::vector<std::span<const std::uint8_t>> frames(n, std::span<const std::uint8_t>(frame));
    metrics.frames_received.fetch_add(n);
    pool.offer_all(frames);
    const std::uint64_t accepted = metrics.frames_accepted.load() - accepted_before;
    const std::uint64_t dropped = queue_full.load() - dropped_before;
    sink.release();
    pool.drain_and_stop();
    return {accepted, dropped};
}

}  // namespace

TEST_CASE("worker pool: a full queue takes the frames that fit and counts the rest as dropped", "[worker_pool]") {
    const auto messages = corpus_messages();
    const Frame frame = tagged(messages.front(), "burst", "x");
    Metrics metrics;
    BlockingSink sink;
    PipelineOptions options;
    options.queue_frames = 10;
    const auto [accepted, dropped] = offer_to_blocked_worker(options, messages, frame, 100, metrics, sink);
    INFO(metrics.summary());
    // Warm-up frames the worker has not taken yet may hold part of the room.
    CHECK(accepted <= 10);
    CHECK(accepted + dropped == 100);
    CHECK(metrics.frames_received.load() ==
          metrics.frames_accepted.load() + metrics.dropped[static_cast<std::size_t>(DropReason::queue_full)].load());
    CHECK(metrics.messages_decoded.load() == metrics.frames_accepted.load());
    CHECK(sink.messages() == metrics.messages_decoded.load());
}

TEST_CASE("worker pool: the byte budget bounds the queue when frames are large", "[worker_pool]") {
    const auto messages = corpus_messages();
    const Frame frame = tagged(messages.front(), "burst", std::string(100'000, 'x'));
    Metrics metrics;
    BlockingSink sink;
    PipelineOptions options;
    options.queue_frames = 1'000'000;
    options.queue_bytes = frame.size() * 7 + frame.size() / 2;  // room for 7 frames of this size
    const auto [accepted, dropped] = offer_to_blocked_worker(options, messages, frame, 50, metrics, sink);
    INFO(metrics.summary());
    // Warm-up frames not taken yet (the whole capture is under 100 kB) may hold part of the room.
    CHECK(accepted <= 7);
    CHECK(accepted >= 6);
    CHECK(accepted + dropped == 50);
    CHECK(metrics.frames_received.load() ==
          metrics.frames_accepted.load() + metrics.dropped[static_cast<std::size_t>(DropReason::queue_full)].load());
    CHECK(sink.messages() == metrics.messages_decoded.load());
}

namespace {

// A fresh directory under the system's temp dir, removed at the end of the test.
struct TempDir {
    fs::path path;
    TempDir() {
        path = fs::temp_directory_path() / ("dnstap-overflow-" + std::to_string(::getpid()) + "-" +
                                            std::to_string(counter()++));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    static int& counter() {
        static int n = 0;
        return n;
    }
};

FrameBatch numbered_frames(std::uint32_t from, std::uint32_t count) {
    FrameBatch batch;
    for (std::uint32_t i = from; i < from + count; ++i) {
        // Frames of different sizes, each carrying its number.
        std::vector<std::uint8_t> f(4 + i % 37, static_cast<std::uint8_t>(i));
        f[0] = static_cast<std::uint8_t>(i >> 24);
        f[1] = static_cast<std::uint8_t>(i >> 16);
        f[2] = static_cast<std::uint8_t>(i >> 8);
        f[3] = static_cast<std::uint8_t>(i);
        batch.add(f);
    }
    return batch;
}

// drain_and_stop() leaves the overflow files for the next start: wait for the workers first.
void wait_until_processed(const WorkerPool& pool) {
    for (int i = 0; pool.queued() > 0; ++i) {
        REQUIRE(i < 3000);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

std::uint32_t number_of(std::span<const std::uint8_t> f) {
    REQUIRE(f.size() >= 4);
    return (std::uint32_t{f[0]} << 24) | (std::uint32_t{f[1]} << 16) | (std::uint32_t{f[2]} << 8) | f[3];
}

}  // namespace

namespace {
using Ms = std::chrono::milliseconds;

// One pop_all() with a Gather: the frames it returned (in `popped`) and how long it took.
struct Gathered {
    std::size_t frames = 0;
    std::chrono::steady_clock::duration waited{};
};
Gathered pop_gathering(FrameBatchQueue& queue, FrameBatchQueue::Gather gather, std::vector<FrameBatch>& popped) {
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(queue.pop_all(popped, Ms(0), gather));
    Gathered out;
    out.waited = std::chrono::steady_clock::now() - t0;
    for (const auto& b : popped) out.frames += b.frames();
    return out;
}

// Pushes frames from..from+n-1; returns how many the queue took. No assertions: producer
// threads call it (Catch2 asserts on the test's thread only).
std::size_t push_numbered(FrameBatchQueue& queue, std::uint32_t from, std::uint32_t n) {
    FrameBatch batch = numbered_frames(from, n);
    return queue.push(batch);
}
}  // namespace

TEST_CASE("frame queue: a wake-up that finds few frames waits for more, at most the gather time",
          "[worker_pool][gather]") {
    FrameBatchQueue queue(1000, 1u << 20);
    REQUIRE(push_numbered(queue, 0, 3) == 3);
    std::vector<FrameBatch> popped;
    const Gathered got = pop_gathering(queue, {100, 1u << 20, Ms(150)}, popped);
    CHECK(got.frames == 3);  // what was there, once the time is up
    CHECK(got.waited >= Ms(140));
    CHECK(got.waited < Ms(5000));
}

TEST_CASE("frame queue: the push that completes a gathered batch wakes the worker at once",
          "[worker_pool][gather]") {
    FrameBatchQueue queue(1000, 1u << 20);
    REQUIRE(push_numbered(queue, 0, 3) == 3);
    std::size_t pushed = 0;
    std::thread producer([&] {
        std::this_thread::sleep_for(Ms(50));
        pushed += push_numbered(queue, 3, 10);  // not enough yet: no wake-up needed
        std::this_thread::sleep_for(Ms(50));
        pushed += push_numbered(queue, 13, 100);
    });
    std::vector<FrameBatch> popped;
    const Gathered got = pop_gathering(queue, {100, 1u << 20, Ms(20000)}, popped);
    producer.join();
    CHECK(pushed == 110);
    CHECK(got.frames == 113);
    CHECK(got.waited < Ms(10000));  // woken by the push, not by the 20 s gather time
    std::uint32_t next = 0;
    for (const auto& b : popped)
        for (std::size_t i = 0; i < b.frames(); ++i) CHECK(number_of(b.frame(i)) == next++);
}

TEST_CASE("frame queue: gathering never waits for more than half the queue's room",
          "[worker_pool][gather]") {
    // A small queue would otherwise fill while the worker waits, and pushes be refused.
    std::vector<FrameBatch> popped;
    FrameBatchQueue by_frames(10, 1u << 20);
    REQUIRE(push_numbered(by_frames, 0, 5) == 5);
    Gathered got = pop_gathering(by_frames, {2048, 1u << 20, Ms(20000)}, popped);
    CHECK(got.frames == 5);
    CHECK(got.waited < Ms(10000));

    FrameBatchQueue by_bytes(1000, 200);
    REQUIRE(push_numbered(by_bytes, 30, 5) == 5);  // 34..38 bytes each: 180 of the 200
    got = pop_gathering(by_bytes, {2048, 1u << 20, Ms(20000)}, popped);
    CHECK(got.frames == 5);
    CHECK(got.waited < Ms(10000));
}

TEST_CASE("frame queue: close() ends a gathering wait", "[worker_pool][gather]") {
    FrameBatchQueue queue(1000, 1u << 20);
    REQUIRE(push_numbered(queue, 0, 1) == 1);
    std::thread closer([&] {
        std::this_thread::sleep_for(Ms(50));
        queue.close();
    });
    std::vector<FrameBatch> popped;
    const Gathered got = pop_gathering(queue, {100, 1u << 20, Ms(20000)}, popped);
    closer.join();
    CHECK(got.frames == 1);  // what memory held still comes out
    CHECK(got.waited < Ms(10000));
}

TEST_CASE("frame queue: frames beyond the memory bound wait in the overflow file and come out in order",
          "[worker_pool][overflow]") {
    TempDir dir;
    FrameBatchQueue queue(10, 1u << 20);
    queue.set_overflow(std::make_unique<OverflowFile>(dir.path / "q.fstrm", 1u << 30));
    std::uint32_t next_in = 0, next_out = 0;
    std::vector<FrameBatch> popped;
    // Producer bursts of varying size, with the consumer taking one slice in between: the
    // queue moves between memory only, memory + file, and file only, and back.
    for (int round = 0; round < 200; ++round) {
        const std::uint32_t burst = static_cast<std::uint32_t>((round * 7919) % 53);
        FrameBatch batch = numbered_frames(next_in, burst);
        REQUIRE(queue.push(batch) == burst);  // the file takes whatever memory cannot
        next_in += burst;
        if (round % 3 == 0) continue;
        REQUIRE(queue.pop_all(popped, std::chrono::milliseconds(0)));
        for (const auto& b : popped)
            for (std::size_t i = 0; i < b.frames(); ++i) REQUIRE(number_of(b.frame(i)) == next_out++);
    }
    while (queue.frames() > 0) {
        REQUIRE(queue.pop_all(popped, std::chrono::milliseconds(0)));
        for (const auto& b : popped)
            for (std::size_t i = 0; i < b.frames(); ++i) REQUIRE(number_of(b.frame(i)) == next_out++);
    }
    queue.close();
    CHECK_FALSE(queue.pop_all(popped, std::chrono::milliseconds(0)));
    CHECK(next_out == next_in);
    CHECK(queue.spilled_total() > 0);
    CHECK(queue.frames() == 0);
    CHECK(queue.overflow_bytes() == 0);
    // Caught up: the file was emptied (only its START frame is left).
    CHECK(fs::file_size(dir.path / "q.fstrm") < 64);
}

TEST_CASE("frame queue: the overflow file's size limit refuses frames, which the caller counts",
          "[worker_pool][overflow]") {
    TempDir dir;
    FrameBatchQueue queue(4, 1u << 20);
    // Room for about 10 frames of 4-40 bytes (each also takes a 4-byte length).
    queue.set_overflow(std::make_unique<OverflowFile>(dir.path / "q.fstrm", 200));
    FrameBatch batch = numbered_frames(0, 100);
    const std::size_t taken = queue.push(batch);
    CHECK(taken > 4);
    CHECK(taken < 30);
    std::vector<FrameBatch> popped;
    std::uint32_t next_out = 0;
    while (queue.frames() > 0) {
        REQUIRE(queue.pop_all(popped, std::chrono::milliseconds(0)));
        for (const auto& b : popped)
            for (std::size_t i = 0; i < b.frames(); ++i) REQUIRE(number_of(b.frame(i)) == next_out++);
    }
    CHECK(next_out == taken);  // the leading frames, in order: the rest were refused
}

TEST_CASE("worker pool: with an overflow directory nothing is dropped for room and everything comes out once",
          "[worker_pool][overflow]") {
    const auto messages = corpus_messages();
    TempDir dir;
    Metrics metrics;
    CollectingSink sink;
    PipelineOptions options;
    options.workers = GENERATE(1u, 3u);
    options.queue_frames = 16;  // far too small: most frames go through the files
    options.overflow_dir = dir.path.string();
    options.storage.nice = 5;
    Run run;
    {
        WorkerPool pool(options, sink, metrics);
        run = produce(pool, metrics, messages, 4, 6);
        wait_until_processed(pool);
        pool.drain_and_stop();
    }
    check_exactly_once(run, sink, metrics);
    CHECK(metrics.dropped[static_cast<std::size_t>(DropReason::queue_full)].load() == 0);
    CHECK(metrics.frames_overflowed.load() > 0);
    // Order within a worker is kept, so the replays pair as in the capture.
    CHECK(sink.pairs() > 0);
    CHECK(metrics.pairs_matched.load() == sink.pairs());
}

TEST_CASE("worker pool: overflow files an earlier run left are processed at start, torn tail skipped",
          "[worker_pool][overflow]") {
    const auto messages = corpus_messages();
    TempDir dir;
    std::map<std::string, int> written;
    // Two files, as a 2-worker run killed mid-burst leaves them; this run has one worker, so
    // worker-1's frames are routed again.
    for (int w = 0; w < 2; ++w) {
        OverflowFile file(dir.path / ("worker-" + std::to_string(w) + ".fstrm"), 1u << 30);
        FrameBatch batch;
        for (std::size_t i = 0; i < messages.size(); ++i) {
            const std::string tag = "w" + std::to_string(w) + "-" + std::to_string(i);
            batch.add(tagged(messages[i], "earlier-" + std::to_string(w), tag));
            ++written[tag];
        }
        REQUIRE(file.append(batch, 0) == messages.size());
    }
    {
        // A frame cut short by the crash.
        std::ofstream tail(dir.path / "worker-0.fstrm", std::ios::binary | std::ios::app);
        const char torn[] = {0, 0, 1, 0, 'x', 'y'};
        tail.write(torn, sizeof torn);
    }
    Metrics metrics;
    CollectingSink sink;
    PipelineOptions options;
    options.workers = 1;
    options.overflow_dir = dir.path.string();
    {
        WorkerPool pool(options, sink, metrics);
        wait_until_processed(pool);
        pool.drain_and_stop();
    }
    INFO(metrics.summary());
    CHECK(metrics.frames_restored.load() == written.size());
    CHECK(sink.seen() == written);
    CHECK(metrics.messages_decoded.load() == written.size());
    CHECK_FALSE(fs::exists(dir.path / "worker-1.fstrm"));
    CHECK(fs::file_size(dir.path / "worker-0.fstrm") < 64);
}

TEST_CASE("overflow file: a restart takes up from where the last run had read, not from the start",
          "[worker_pool][overflow]") {
    TempDir dir;
    const fs::path path = dir.path / "worker-0.fstrm";
    FrameBatch got;
    {
        OverflowFile file(path, 1u << 30);
        FrameBatch batch = numbered_frames(0, 1000);
        REQUIRE(file.append(batch, 0) == 1000);
        // About a third handed out before the "crash" (the object goes away without reset()).
        REQUIRE(file.read(got, file.write_offset(), 8000) > 0);
    }
    const std::size_t handed_out = got.frames();
    REQUIRE(handed_out < 1000);
    OverflowFile again(path, 1u << 30);
    CHECK(again.restored_frames() == 1000 - handed_out);
    FrameBatch rest;
    while (again.read(rest, again.write_offset(), 1u << 20) > 0) {}
    REQUIRE(rest.frames() == 1000 - handed_out);
    for (std::size_t i = 0; i < rest.frames(); ++i) REQUIRE(number_of(rest.frame(i)) == handed_out + i);
}

TEST_CASE("worker pool: a shutdown leaves the overflow backlog on disk and the next start stores it",
          "[worker_pool][overflow]") {
    const auto messages = corpus_messages();
    TempDir dir;
    PipelineOptions options;
    options.workers = 1;
    options.queue_frames = 10;
    options.overflow_dir = dir.path.string();
    const Frame frame = tagged(messages.front(), "burst", "x");
    Metrics first;
    BlockingSink blocked;
    std::uint64_t left = 0;
    {
        WorkerPool pool(options, blocked, first);
        // The worker sits in the sink with the first frames; the rest queue up, then overflow.
        for (int round = 0; !blocked.entered(); ++round) {
            REQUIRE(round < 1000);
            for (std::size_t i = 0; i < messages.size(); ++i) pool.offer(tagged(messages[i], "warm-up", std::to_string(i)));
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        std::vector<std::span<const std::uint8_t>> burst(500, std::span<const std::uint8_t>(frame));
        pool.offer_all(burst);
        // The shutdown must begin before the worker is free again: released first, it can read
        // the whole backlog back before drain_and_stop() closes its queue.
        std::thread stopper([&pool] { pool.drain_and_stop(); });
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        blocked.release();
        stopper.join();
        left = first.overflow_frames.load();
    }
    INFO(first.summary());
    CHECK(first.dropped_total() == 0);
    REQUIRE(left > 400);  // the burst, less what fit in memory
    CHECK(first.frames_accepted.load() == first.messages_decoded.load() + left);

    Metrics second;
    CollectingSink sink;
    {
        WorkerPool pool(options, sink, second);
        wait_until_processed(pool);
        pool.drain_and_stop();
    }
    INFO(second.summary());
    CHECK(second.frames_restored.load() == left);
    CHECK(second.messages_decoded.load() == left);
    CHECK(second.overflow_frames.load() == 0);
}

TEST_CASE("storage priority: a thread lowers its own nice value, never raises it, and joins a cgroup directory",
          "[worker_pool][priority]") {
    int seen_after_lower = -100, seen_after_raise = -100;
    long tid = 0;
    TempDir v1, v2;
    std::ofstream(v1.path / "tasks").flush();
    std::ofstream(v2.path / "cgroup.threads").flush();  // v2: threads join through cgroup.threads
    std::ofstream(v2.path / "tasks").flush();
    bool joined_v1 = false, joined_v2 = false;
    // Relative to where the test runs (CI may run it niced already).
    const int own_before = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
    const int target = std::min(19, own_before + 5);
    std::thread t([&] {
        tid = static_cast<long>(::gettid());
        lower_thread_priority(target, "the test thread");
        seen_after_lower = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
        lower_thread_priority(std::max(0, target - 4), "the test thread");  // a raise: left as is
        seen_after_raise = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
        joined_v1 = join_cgroup(v1.path.string(), "the test thread");
        joined_v2 = join_cgroup(v2.path.string(), "the test thread");
    });
    t.join();
    CHECK(seen_after_lower == target);
    CHECK(seen_after_raise == target);
    // Only the calling thread: the test's own thread keeps its priority.
    CHECK(::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid())) == own_before);
    auto first_line = [](const fs::path& p) {
        std::ifstream in(p);
        std::string line;
        std::getline(in, line);
        return line;
    };
    CHECK(joined_v1);
    CHECK(first_line(v1.path / "tasks") == std::to_string(tid));
    CHECK(joined_v2);
    CHECK(first_line(v2.path / "cgroup.threads") == std::to_string(tid));
    CHECK(first_line(v2.path / "tasks").empty());
    CHECK_FALSE(join_cgroup((v1.path / "missing").string(), "the test thread"));
}
