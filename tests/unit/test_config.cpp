#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <unistd.h>
#include <fstream>

#include "dnstap_collector/config.hpp"

using namespace dnstap_collector;

namespace {
Config parse(std::vector<std::string> args) {
    args.insert(args.begin(), "dnstap-collector");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    return parse_command_line(static_cast<int>(argv.size()), argv.data());
}

std::string write_file(const std::string& text) {
    char name[] = "/tmp/dnstap-config-XXXXXX";
    int fd = mkstemp(name);
    REQUIRE(fd >= 0);
    close(fd);
    std::ofstream(name) << text;
    return name;
}
}  // namespace

TEST_CASE("fstrm_capture flags mean what they mean there") {
    auto c = parse({"serve", "-t", "protobuf:dnstap.Dnstap", "-u", "/run/a.sock", "-u", "/run/b.sock",
                    "-a", "127.0.0.1", "-p", "6000", "-w", "/tmp/x.fstrm", "-s", "60"});
    REQUIRE(c.ingest.unix_sockets.size() == 2);
    CHECK(c.ingest.unix_sockets[1].path == "/run/b.sock");
    REQUIRE(c.ingest.tcp.size() == 1);
    CHECK(c.ingest.tcp[0].host == "127.0.0.1");
    CHECK(c.ingest.tcp[0].port == 6000);
    REQUIRE(c.file);
    CHECK(c.file->split_seconds == 60);
}

TEST_CASE("the default command is serve") {
    auto c = parse({"-u", "/tmp/s"});
    CHECK(c.command == "serve");
}

TEST_CASE("an unknown option or a bad value is an error that names it") {
    CHECK_THROWS_WITH(parse({"serve", "--bogus"}), Catch::Contains("--bogus"));
    CHECK_THROWS_WITH(parse({"serve", "-u", "/s", "--workers", "lots"}), Catch::Contains("--workers"));
    CHECK_THROWS_WITH(parse({"serve", "-t", "protobuf:other"}), Catch::Contains("protobuf:dnstap.Dnstap"));
    CHECK_THROWS_WITH(parse({"serve", "-a", "127.0.0.1"}), Catch::Contains("port"));
}

TEST_CASE("TOML keys set the same options as flags, and flags win") {
    auto path = write_file(R"(
[listen]
unix = ["/run/dnstap.sock"]
socket_mode = "0640"
[postgres]
conninfo = "host=/tmp dbname=dnstap"
partition = "hour"
retention_days = 7
[pipeline]
workers = 3
)");
    auto c = parse({"serve", "--config", path, "--workers", "5"});
    REQUIRE(c.ingest.unix_sockets.size() == 1);
    CHECK(c.ingest.unix_sockets[0].mode == 0640);
    REQUIRE(c.postgres);
    CHECK(c.postgres->conninfo == "host=/tmp dbname=dnstap");
    CHECK(c.postgres->partition_width == PartitionWidth::hour);
    CHECK(c.postgres->retention_days == 7);
    CHECK(c.pipeline.workers == 5);
    std::remove(path.c_str());
}

TEST_CASE("an unknown TOML key is an error naming the key and its line") {
    auto path = write_file("[postgres]\nconninfo = \"x\"\nretention = 3\n");
    CHECK_THROWS_WITH(parse({"serve", "--config", path}), Catch::Contains("postgres.retention") && Catch::Contains(":3"));
    std::remove(path.c_str());
}

TEST_CASE("a bad TOML value is an error naming the key and its line") {
    auto path = write_file("[postgres]\n\npartition = \"week\"\n");
    CHECK_THROWS_WITH(parse({"serve", "--config", path}), Catch::Contains("postgres.partition") && Catch::Contains(":3"));
    std::remove(path.c_str());
}

TEST_CASE("flush_interval of an older configuration sets the commit interval") {
    const auto file = write_file("[postgres]\nconninfo = \"dbname=x\"\nflush_interval = 0.75\n");
    auto c = parse({"serve", "-u", "/run/a.sock", "--config", file});
    std::remove(file.c_str());
    REQUIRE(c.postgres);
    CHECK(c.postgres->commit_interval == std::chrono::milliseconds(750));
    CHECK(parse({"serve", "-u", "/run/a.sock", "--postgres", "dbname=x", "--flush-interval", "2"})
              .postgres->commit_interval == std::chrono::seconds(2));
}

TEST_CASE("pdns-max-delay takes seconds, 0 upserts pdns at every COMMIT") {
    CHECK(parse({"serve", "-u", "/run/a.sock", "--postgres", "dbname=x"}).postgres->pdns_max_delay ==
          std::chrono::seconds(5));
    CHECK(parse({"serve", "-u", "/run/a.sock", "--postgres", "dbname=x", "--pdns-max-delay", "0"})
              .postgres->pdns_max_delay == std::chrono::milliseconds(0));
    const auto file = write_file("[postgres]\nconninfo = \"dbname=x\"\npdns_max_delay = 2.5\n");
    auto c = parse({"serve", "-u", "/run/a.sock", "--config", file});
    std::remove(file.c_str());
    CHECK(c.postgres->pdns_max_delay == std::chrono::milliseconds(2500));
    CHECK_THROWS(parse({"serve", "-u", "/run/a.sock", "--postgres", "dbname=x", "--pdns-max-delay", "soon"}));
}

TEST_CASE("queue-bytes bounds the frame queue and refuses a budget under 1 MiB") {
    CHECK(parse({"serve", "-u", "/run/a.sock", "-w", "/tmp/x", "--queue-bytes", "16777216"}).pipeline.queue_bytes ==
          16u << 20);
    CHECK_THROWS_WITH(parse({"serve", "-u", "/run/a.sock", "-w", "/tmp/x", "--queue-bytes", "1000"}),
                      Catch::Contains("queue bytes"));
}

TEST_CASE("overflow and storage priority options from TOML and flags, with their bounds") {
    const auto file = write_file(R"([pipeline]
overflow_dir = "/var/lib/dnstap-collector/overflow"
overflow_max_bytes = 1073741824
storage_nice = 19
storage_cgroup = "/sys/fs/cgroup/cpu/dnstap-storage"
storage_yield = true
)");
    auto c = parse({"serve", "-u", "/run/a.sock", "--postgres", "dbname=x", "--config", file});
    std::remove(file.c_str());
    CHECK(c.pipeline.overflow_dir == "/var/lib/dnstap-collector/overflow");
    CHECK(c.pipeline.overflow_max_bytes == (1ull << 30));
    CHECK(c.pipeline.storage.nice == 19);
    CHECK(c.pipeline.storage.cgroup == "/sys/fs/cgroup/cpu/dnstap-storage");
    CHECK(c.pipeline.storage.yield);
    CHECK(parse({"serve", "-u", "/run/a.sock", "--postgres", "dbname=x", "--storage-nice", "5"}).pipeline.storage.nice == 5);
    CHECK_THROWS_WITH(parse({"serve", "-u", "/run/a.sock", "--postgres", "dbname=x", "--storage-nice", "20"}),
                      Catch::Contains("storage nice"));
    CHECK_THROWS_WITH(parse({"serve", "-u", "/run/a.sock", "--postgres", "dbname=x", "--overflow-max-bytes", "1000"}),
                      Catch::Contains("overflow max bytes"));
    CHECK(parse({"serve", "-u", "/run/a.sock", "--postgres", "dbname=x", "--storage-yield"}).pipeline.storage.yield);
    // Defaults: no overflow files, normal priority, no yielding (what serve did before these options).
    auto d = parse({"serve", "-u", "/run/a.sock", "--postgres", "dbname=x"});
    CHECK(d.pipeline.overflow_dir.empty());
    CHECK(d.pipeline.storage.nice == 0);
    CHECK_FALSE(d.pipeline.storage.yield);
}
