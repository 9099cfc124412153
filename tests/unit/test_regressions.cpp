// Crash regressions found by the fuzz targets (tests/fuzz, docs/fuzzing.md). Each input is
// stored minimized under tests/fuzz/regressions/<target>/ and replayed here through the same
// calls as its fuzz target. Under ASan/UBSan (build-asan) a regression shows as a sanitizer
// report; in a plain build the checks below fail where the result is wrong.
//
// "[regression]" runs them all. A test here fails until the bug it names is fixed.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <functional>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "dnstap_collector/decode.hpp"
#include "dnstap_collector/dns.hpp"
#include "dnstap_collector/frame.hpp"
#include "dnstap_collector/pair.hpp"
#include "sinks/copy_encoder.hpp"

using namespace dnstap_collector;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<std::uint8_t>;

// Runs `body` in a child process and tells how it ended: a crash (SEGV, a sanitizer abort)
// fails the one test instead of killing the whole unit_tests run. The child exits 0 when
// `body` returns true.
std::string run_isolated(const std::function<bool()>& body) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        bool ok = false;
        try {
            ok = body();
        } catch (...) {
        }
        std::_Exit(ok ? 0 : 1);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    if (WIFEXITED(status)) return WEXITSTATUS(status) == 0 ? "ok" : "checks failed";
    if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
    return "ended oddly";
}

fs::path regressions_dir() { return fs::path(__FILE__).parent_path().parent_path() / "fuzz" / "regressions"; }

Bytes read_regression(const std::string& target, const std::string& name) {
    std::ifstream in(regressions_dir() / target / name, std::ios::binary);
    REQUIRE(in);
    return Bytes{std::istreambuf_iterator<char>(in), {}};
}

bool printable(const std::string& s) {
    for (const char c : s)
        if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) return false;
    return true;
}

// What fuzz_dnstap_decode does with a frame, minus most of its invariant checks. These run
// in a child process (run_isolated), so they report through their return value.
bool replay_dnstap(const Bytes& frame) {
    (void)route_hash(frame);
    DnstapMessage m;
    const DecodeStatus status = decode_dnstap(frame, m);
    if (status == DecodeStatus::bad_protobuf || status == DecodeStatus::not_message) return true;
    bool ok = printable(format_text(m)) && printable(format_json(m));
    std::vector<Exchange> exchanges(2);
    (is_query(m.type) ? exchanges[0].query : exchanges[0].response) = std::make_unique<DnstapMessage>(m);
    exchanges[1].query = std::make_unique<DnstapMessage>(m);
    exchanges[1].response = std::make_unique<DnstapMessage>(m);
    for (const auto& e : exchanges) ok = ok && printable(format_exchange_text(e)) && printable(format_exchange_json(e));
    return ok && copy::encode_batch(exchanges, true).size() == 2;
}

// What fuzz_dns_parse does with a message.
bool replay_dns(const Bytes& wire) {
    DnsMessage m;
    bool ok = parse_dns(wire, m) == m.error.empty() && printable(m.qname);
    for (const auto& rr : m.answers) ok = ok && printable(rr.name) && printable(rr.rdata);
    std::string name;
    (void)name_to_text(wire, name, true);
    return ok && printable(name);
}

// What fuzz_frame_reader does with a stream (all at once).
bool replay_frames(const Bytes& stream) {
    FrameReader r;
    r.append(stream);
    FrameEvent ev;
    std::error_code ec;
    bool ok = true;
    while (r.next(ev, ec) == FrameReader::Result::event)
        if (ev.kind == FrameEvent::Kind::data) ok = ok && ev.data.size() == ev.length;
    return ok;
}

}  // namespace

// Every stored regression input, through its target's calls: none may crash (ASan/UBSan
// builds turn memory errors and undefined behaviour into failures).
TEST_CASE("regression inputs replay without crashing", "[regression]") {
    if (!fs::exists(regressions_dir())) return;
    for (const auto& target : fs::directory_iterator(regressions_dir())) {
        if (!target.is_directory()) continue;
        for (const auto& file : fs::directory_iterator(target.path())) {
            // *.primer files only set up state for the test that names them.
            if (!file.is_regular_file() || file.path().extension() == ".primer") continue;
            const std::string t = target.path().filename().string();
            INFO("regression input " << t << "/" << file.path().filename().string());
            std::ifstream in(file.path(), std::ios::binary);
            const Bytes bytes{std::istreambuf_iterator<char>(in), {}};
            const std::string how = run_isolated([&] {
                if (t == "fuzz_dnstap_decode") return replay_dnstap(bytes);
                if (t == "fuzz_dns_parse") return replay_dns(bytes);
                if (t == "fuzz_frame_reader") return replay_frames(bytes);
                return true;
            });
            CHECK(how == "ok");
        }
    }
}

// ---- fuzz_dns_parse ------------------------------------------------------------------------

// NSEC3 whose salt length (255) runs past its 5-byte rdata. libknot's knot_pkt_parse accepts
// it (it checks rdata framing, not the fields inside), and knot_rrset_txt_dump_data (called by
// dump_rdata, src/dns/dns.cpp) then reads the salt, hash and type bitmap beyond the rdata,
// into the per-thread arena: stale bytes of earlier messages. When libknot trips over them it
// returns an error (dump_rdata then prints \# generic form: looks harmless); when they read
// as long lengths it runs off the 64 KiB arena block: SEGV, a worker and so the collector
// down. Found by fuzz_dns_parse (crash-1c317915..., crash-2e381ff8..., crash-62ef5687...,
// all NSEC3); the "primer" message leaves 0xff bytes in the arena to make it deterministic.
// Any dnstap sender, or a remote server whose answer a resolver logs, can send such a record.
TEST_CASE("regression: NSEC3 salt length past the rdata does not read beyond it", "[regression][dns]") {
    const Bytes primer = read_regression("fuzz_dns_parse", "nsec3-salt-past-rdata.primer");
    const Bytes wire = read_regression("fuzz_dns_parse", "nsec3-salt-past-rdata");
    const std::string how = run_isolated([&] {
        DnsMessage m;
        parse_dns(primer, m);
        parse_dns(wire, m);
        // 5 bytes of rdata: nothing longer than a few dozen characters can describe them.
        return m.answers.size() <= 1 && (m.answers.empty() || m.answers[0].rdata.size() <= 64);
    });
    CHECK(how == "ok");
}

// ---- fuzz_dnstap_decode --------------------------------------------------------------------

// query_time_sec = 9223372035 (the largest value to_ns() accepts, INT64_MAX / 1e9 - 1) with
// query_time_nsec = 0xffffffff: sec * 1e9 + nsec overflows int64 (signed overflow, UB;
// UBSan: src/decode/decode.cpp to_ns(), called from decode_dnstap). nsec is a fixed32 the
// sender controls and is never checked against 1e9. The same for response_time. In a plain
// build the time wraps to a large negative value; under UBSan the process aborts.
TEST_CASE("regression: time seconds near the limit with nsec >= 1e9 do not overflow", "[regression][decode]") {
    for (const char* name : {"time-overflow-query-nsec", "time-overflow-response-nsec"}) {
        INFO(name);
        const Bytes frame = read_regression("fuzz_dnstap_decode", name);
        const std::string how = run_isolated([&] {
            DnstapMessage m;
            if (decode_dnstap(frame, m) != DecodeStatus::ok) return false;
            return (m.query_time_ns == -1 || m.query_time_ns >= 0) &&
                   (m.response_time_ns == -1 || m.response_time_ns >= 0) && printable(format_json(m));
        });
        CHECK(how == "ok");
    }
}

// ---- fuzz_frame_reader ---------------------------------------------------------------------

// append() of an empty span on a fresh reader: prepare(0) leaves the buffer unallocated and
// append() calls memcpy(nullptr, nullptr, 0), undefined behaviour (UBSan: "null pointer passed
// as argument 1", src/frame/frame_reader.cpp:107). Harmless on glibc in practice, but it
// aborts every UBSan build that feeds a zero-length read. Passes in a plain build.
TEST_CASE("regression: FrameReader::append of nothing", "[regression][frame]") {
    const Bytes empty = read_regression("fuzz_frame_reader", "empty-append");
    const std::string how = run_isolated([&] {
        FrameReader r;
        r.append({});
        r.append(empty);
        FrameEvent ev;
        std::error_code ec;
        return r.next(ev, ec) == FrameReader::Result::need_more && r.pending_bytes() == 0;
    });
    CHECK(how == "ok");
}
