// Configuration: command line and TOML (--config). Every option is both a flag and a key;
// errors name the flag, or the key and its line.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "dnstap_collector/ingest.hpp"
#include "dnstap_collector/pipeline.hpp"
#include "dnstap_collector/sinks.hpp"

namespace dnstap_collector {

struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Config {
    std::string command = "serve";          // serve, import, read, migrate, lookup, tail, report
    std::vector<std::string> arguments;     // files for import/read, the query for lookup
    std::string config_file;
    bool check_only = false;                // serve --check
    bool json = false;                      // read/lookup/tail --json
    IngestOptions ingest;
    PipelineOptions pipeline;
    std::optional<PostgresOptions> postgres;  // set when --postgres (or [postgres]) is given
    std::optional<FileSinkOptions> file;
    std::string metrics_address;            // HOST:PORT, empty: off
    std::string tail_socket;                // where `tail` clients connect
    std::string log_level = "info";
    // Listener settings that apply to every -u / -a, wherever they stand on the line.
    std::optional<unsigned> socket_mode;
    std::string socket_group;
    std::optional<std::uint16_t> tcp_port;
    // lookup / report
    std::optional<std::chrono::sys_seconds> window_from, window_to;
    int limit = 20;
    // tail filters
    std::string tail_suffix, tail_client, tail_rcode;
};

// Parses argv (and the TOML file it names). Throws ConfigError with a message for the user.
Config parse_command_line(int argc, char** argv);
std::string usage();

}  // namespace dnstap_collector
