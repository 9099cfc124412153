// FileSink writes files that FrameReader (and so fstrm_dump / dnstap-read) accepts.
#include <catch2/catch.hpp>

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "dnstap_collector/frame.hpp"
#include "dnstap_collector/metrics.hpp"
#include "dnstap_collector/sinks.hpp"

using namespace dnstap_collector;
namespace fs = std::filesystem;

namespace {

struct TempDir {
    fs::path path;
    TempDir() {
        std::string tmpl = (fs::temp_directory_path() / "file_sink_test.XXXXXX").string();
        if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

struct Capture {
    bool started = false;
    std::vector<std::string> content_types;
    std::vector<std::string> frames;
    bool stopped = false;
    std::error_code error;
    std::size_t pending = 0;
};

// Reads a file the way a receiver does: unidirectional, START ... STOP.
Capture read_capture(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    const std::vector<std::uint8_t> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    FrameReader reader;
    reader.append(bytes);
    Capture c;
    FrameEvent ev;
    for (;;) {
        const auto r = reader.next(ev, c.error);
        if (r != FrameReader::Result::event) break;
        switch (ev.kind) {
        case FrameEvent::Kind::start:
            c.started = true;
            c.content_types = ev.content_types;
            break;
        case FrameEvent::Kind::data: c.frames.emplace_back(ev.data.begin(), ev.data.end()); break;
        case FrameEvent::Kind::stop: c.stopped = true; break;
        case FrameEvent::Kind::ready:
        case FrameEvent::Kind::oversized: break;
        }
    }
    c.pending = reader.pending_bytes();
    return c;
}

bool offer(FileSink& sink, const std::string& s) {
    return sink.offer({reinterpret_cast<const std::uint8_t*>(s.data()), s.size()});
}

std::vector<fs::path> files_in(const fs::path& dir) {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path());
    std::sort(out.begin(), out.end());
    return out;
}

// The sink flushes when idle, so a live reader sees frames within about a second.
bool wait_for_frames(const fs::path& path, std::size_t n) {
    for (int i = 0; i < 50; ++i) {
        if (read_capture(path).frames.size() >= n) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
}

}  // namespace

TEST_CASE("file sink writes START with the dnstap content type, the frames, then STOP") {
    TempDir dir;
    Metrics metrics;
    const auto path = dir.path / "capture.fstrm";
    {
        FileSink sink({path.string(), 0, false}, metrics);
        sink.start();
        CHECK(offer(sink, "first"));
        CHECK(offer(sink, std::string(70'000, 'x')));
        CHECK(offer(sink, "third"));
        sink.stop();
    }
    const auto c = read_capture(path);
    CHECK_FALSE(c.error);
    CHECK(c.started);
    CHECK(c.content_types == std::vector<std::string>{std::string(dnstap_content_type)});
    CHECK(c.frames == std::vector<std::string>{"first", std::string(70'000, 'x'), "third"});
    CHECK(c.stopped);
    CHECK(c.pending == 0);
    CHECK(metrics.dropped_total() == 0);
}

TEST_CASE("file sink data is readable before the file is closed") {
    TempDir dir;
    Metrics metrics;
    const auto path = dir.path / "live.fstrm";
    FileSink sink({path.string(), 0, false}, metrics);
    sink.start();
    offer(sink, "live");
    CHECK(wait_for_frames(path, 1));
    CHECK_FALSE(read_capture(path).stopped);
    sink.stop();
    CHECK(read_capture(path).stopped);
}

TEST_CASE("file sink rotation produces two complete files") {
    TempDir dir;
    Metrics metrics;
    const auto path = dir.path / "rot.fstrm";
    FileSink sink({path.string(), 0, false}, metrics);
    sink.start();
    offer(sink, "a");
    offer(sink, "b");
    REQUIRE(wait_for_frames(path, 2));
    sink.rotate();
    // rotate() is asynchronous: the second file appears within a poll interval.
    const auto second = fs::path(path.string() + ".1");
    for (int i = 0; i < 50 && !fs::exists(second); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    offer(sink, "c");
    sink.stop();

    REQUIRE(files_in(dir.path) == std::vector<fs::path>{path, second});
    const auto one = read_capture(path), two = read_capture(second);
    CHECK((one.started && one.stopped && !one.error && one.pending == 0));
    CHECK((two.started && two.stopped && !two.error && two.pending == 0));
    CHECK(one.frames == std::vector<std::string>{"a", "b"});
    CHECK(two.frames == std::vector<std::string>{"c"});
}

TEST_CASE("file sink never truncates an existing file") {
    TempDir dir;
    Metrics metrics;
    const auto path = dir.path / "old.fstrm";
    { std::ofstream(path) << "previous capture"; }
    FileSink sink({path.string(), 0, false}, metrics);
    sink.start();
    offer(sink, "new");
    sink.stop();
    std::ifstream in(path);
    std::string old;
    std::getline(in, old);
    CHECK(old == "previous capture");
    CHECK(read_capture(path.string() + ".1").frames == std::vector<std::string>{"new"});
}

TEST_CASE("file sink splits on the clock into strftime-named complete files") {
    TempDir dir;
    Metrics metrics;
    FileSink sink({(dir.path / "dnstap-%Y%m%d-%H%M%S.fstrm").string(), 1, false}, metrics);
    sink.start();
    int sent = 0;
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(2300);
    while (std::chrono::steady_clock::now() < until) {
        offer(sink, "frame" + std::to_string(sent++));
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    sink.stop();

    const auto files = files_in(dir.path);
    CHECK(files.size() >= 2);
    std::vector<std::string> all;
    for (const auto& f : files) {
        INFO(f);
        CHECK(f.filename().string().rfind("dnstap-20", 0) == 0);
        const auto c = read_capture(f);
        CHECK((c.started && c.stopped && !c.error && c.pending == 0));
        all.insert(all.end(), c.frames.begin(), c.frames.end());
    }
    REQUIRE(all.size() == static_cast<std::size_t>(sent));
    for (int i = 0; i < sent; ++i) CHECK(all[static_cast<std::size_t>(i)] == "frame" + std::to_string(i));
}

TEST_CASE("file sink counts a frame it cannot take as sink_full") {
    TempDir dir;
    Metrics metrics;
    FileSink sink({(dir.path / "x.fstrm").string(), 0, false}, metrics);
    CHECK_FALSE(offer(sink, "not started"));
    CHECK(metrics.dropped[static_cast<std::size_t>(DropReason::sink_full)] == 1);
}

TEST_CASE("file sink refuses to start on a path it cannot create") {
    Metrics metrics;
    FileSink sink({"/nonexistent-dir/x.fstrm", 0, false}, metrics);
    CHECK_THROWS_AS(sink.start(), std::runtime_error);
}
