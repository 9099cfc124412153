#include "dnstap_collector/config.hpp"

#include <algorithm>
#include <charconv>
#include <ctime>
#include <functional>
#include <sstream>
#include <string_view>

#include <arpa/inet.h>
#include <grp.h>

#include <toml++/toml.h>

#include "dnstap_collector/frame.hpp"

namespace dnstap_collector {

namespace {

// One table of options: each is a flag and a TOML key, and both go through the same setter,
// so the two can never disagree.
struct Option {
    std::string_view flag;        // long flag without "--"
    char short_flag;              // 0: none
    std::string_view key;         // "section.key" in the TOML file; empty: command line only
    bool takes_value;
    std::string_view help;
    std::function<void(Config&, const std::string&)> set;
};

template <typename T>
T parse_number(const std::string& value, std::string_view what, T min, T max) {
    T out{};
    auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), out);
    if (ec != std::errc() || ptr != value.data() + value.size() || out < min || out > max) {
        std::ostringstream msg;
        msg << what << ": '" << value << "' is not a number between " << min << " and " << max;
        throw ConfigError(msg.str());
    }
    return out;
}

bool parse_bool(const std::string& value, std::string_view what) {
    if (value == "true" || value == "yes" || value == "1" || value == "on") return true;
    if (value == "false" || value == "no" || value == "0" || value == "off") return false;
    throw ConfigError(std::string(what) + ": '" + value + "' is not true or false");
}

PostgresOptions& pg(Config& c) {
    if (!c.postgres) c.postgres.emplace();
    return *c.postgres;
}
FileSinkOptions& file(Config& c) {
    if (!c.file) c.file.emplace();
    return *c.file;
}

bool valid_address(const std::string& host);

TcpListenerOptions parse_tcp(const std::string& value) {
    TcpListenerOptions tcp;
    std::string host = value;
    const auto numeric = [&](const std::string& h) {
        if (!valid_address(h)) throw ConfigError("'" + h + "' is not a numeric address");
        return h;
    };
    std::string port;
    if (!value.empty() && value.front() == '[') {  // [::1]:6000
        auto close = value.find(']');
        if (close == std::string::npos) throw ConfigError("tcp: bad address '" + value + "'");
        host = value.substr(1, close - 1);
        if (close + 1 < value.size() && value[close + 1] == ':') port = value.substr(close + 2);
    } else if (auto colon = value.rfind(':'); colon != std::string::npos && value.find(':') == colon) {
        host = value.substr(0, colon);
        port = value.substr(colon + 1);
    }
    tcp.host = host.empty() ? "127.0.0.1" : numeric(host);
    if (!port.empty()) tcp.port = parse_number<std::uint16_t>(port, "tcp port", 1, 65535);
    return tcp;
}

std::chrono::milliseconds parse_seconds(const std::string& value, std::string_view what) {
    double seconds = 0;
    std::istringstream in(value);
    if (!(in >> seconds) || !in.eof() || seconds < 0 || seconds > 86400)
        throw ConfigError(std::string(what) + ": '" + value + "' is not a number of seconds");
    return std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
}

// "2026-11-21", "2026-11-21T10:00:00Z", unix seconds, or an age like "90m", "24h", "7d".
std::chrono::sys_seconds parse_time(const std::string& value, std::string_view what) {
    using namespace std::chrono;
    const auto bad = [&] {
        return ConfigError(std::string(what) + ": '" + value +
                           "' is not a time (2026-11-21, 2026-11-21T10:00:00Z, unix seconds, or an age like 24h)");
    };
    if (value.empty()) throw bad();
    const char unit = value.back();
    if (unit == 's' || unit == 'm' || unit == 'h' || unit == 'd' || unit == 'w') {
        const auto n = parse_number<long long>(value.substr(0, value.size() - 1), what, 0, 100LL * 365 * 86400);
        const long long scale = unit == 's' ? 1 : unit == 'm' ? 60 : unit == 'h' ? 3600 : unit == 'd' ? 86400 : 604800;
        return time_point_cast<seconds>(system_clock::now()) - seconds(n * scale);
    }
    if (value.find('-') == std::string::npos)
        return sys_seconds(seconds(parse_number<long long>(value, what, 0, 1LL << 40)));
    std::tm tm{};
    const char* end = strptime(value.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
    if (!end) end = strptime(value.c_str(), "%Y-%m-%d %H:%M:%S", &tm);
    if (!end) {
        tm = std::tm{};
        end = strptime(value.c_str(), "%Y-%m-%d", &tm);
    }
    if (!end || !(*end == '\0' || (end[0] == 'Z' && end[1] == '\0'))) throw bad();
    return sys_seconds(seconds(timegm(&tm)));
}

// "192.0.2.1", "2001:db8::1", optionally "/LEN": what a source-network entry must look like.
bool valid_network(const std::string& value) {
    const auto slash = value.find('/');
    const std::string address = value.substr(0, slash);
    unsigned char buf[16];
    int bits = 0;
    if (inet_pton(AF_INET, address.c_str(), buf) == 1) bits = 32;
    else if (inet_pton(AF_INET6, address.c_str(), buf) == 1) bits = 128;
    else return false;
    if (slash == std::string::npos) return true;
    int length = -1;
    const std::string len = value.substr(slash + 1);
    auto [ptr, ec] = std::from_chars(len.data(), len.data() + len.size(), length);
    return ec == std::errc() && ptr == len.data() + len.size() && length >= 0 && length <= bits;
}

bool valid_address(const std::string& host) {
    unsigned char buf[16];
    return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// Each value is checked where it is set, so a bad one names its flag or its key and line,
// and `--check` refuses whatever `serve` would refuse at start.
std::string checked_metrics_address(const std::string& m) {
    const auto colon = m.rfind(':');
    std::string host = colon == std::string::npos ? "" : m.substr(0, colon);
    if (host.size() > 1 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (colon == std::string::npos || (!host.empty() && !valid_address(host)))
        throw ConfigError("'" + m + "' is not HOST:PORT with a numeric address");
    parse_number<std::uint16_t>(m.substr(colon + 1), "port", 1, 65535);
    return m;
}

const std::vector<Option>& options() {
    static const std::vector<Option> all = {
        {"config", 0, "", true, "TOML configuration file", [](Config& c, const std::string& v) { c.config_file = v; }},
        {"check", 0, "", false, "validate the configuration and exit", [](Config& c, const std::string&) { c.check_only = true; }},
        {"json", 0, "", false, "JSON output (read, tail)", [](Config& c, const std::string&) { c.json = true; }},
        {"unix", 'u', "listen.unix", true, "Unix socket to listen on (repeatable)",
         [](Config& c, const std::string& v) { c.ingest.unix_sockets.push_back({v, 0660, ""}); }},
        {"socket-mode", 0, "listen.socket_mode", true, "mode of the Unix sockets (octal, default 0660)",
         [](Config& c, const std::string& v) {
             unsigned mode = 0;
             auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), mode, 8);
             if (ec != std::errc() || p != v.data() + v.size() || mode > 0777)
                 throw ConfigError("socket mode: '" + v + "' is not an octal mode like 0660");
             c.socket_mode = mode;
         }},
        {"socket-group", 0, "listen.socket_group", true, "group of the Unix sockets (default: bind, if it exists)",
         [](Config& c, const std::string& v) {
             if (getgrnam(v.c_str()) == nullptr) throw ConfigError("no group named '" + v + "'");
             c.socket_group = v;
         }},
        {"tcp", 'a', "listen.tcp", true, "TCP address to listen on, HOST[:PORT] (repeatable)",
         [](Config& c, const std::string& v) { c.ingest.tcp.push_back(parse_tcp(v)); }},
        {"port", 'p', "listen.port", true, "TCP port for -a HOST (as fstrm_capture)",
         [](Config& c, const std::string& v) { c.tcp_port = parse_number<std::uint16_t>(v, "port", 1, 65535); }},
        {"tcp-allow", 0, "listen.tcp_allow", true, "source network allowed over TCP, CIDR (repeatable)",
         [](Config& c, const std::string& v) {
             if (!valid_network(v)) throw ConfigError("'" + v + "' is not an address or CIDR network");
             c.ingest.tcp_allow.push_back(v);
         }},
        {"type", 't', "listen.content_type", true, "content type (only protobuf:dnstap.Dnstap)",
         [](Config&, const std::string& v) {
             if (v != dnstap_content_type) throw ConfigError("type: only " + std::string(dnstap_content_type) + " is supported");
         }},
        {"max-frame-size", 0, "listen.max_frame_size", true, "largest data frame accepted, bytes (default 1 MiB)",
         [](Config& c, const std::string& v) { c.ingest.max_frame_size = parse_number<std::size_t>(v, "max frame size", 512, 1u << 30); }},
        {"handshake-timeout", 0, "listen.handshake_timeout", true, "seconds a sender has to start (default 10)",
         [](Config& c, const std::string& v) { c.ingest.handshake_timeout = std::chrono::seconds(parse_number<int>(v, "handshake timeout", 1, 3600)); }},
        {"workers", 0, "pipeline.workers", true, "decode/pair workers (default: CPUs - 1, at least 1)",
         [](Config& c, const std::string& v) { c.pipeline.workers = parse_number<unsigned>(v, "workers", 1, 256); }},
        {"queue-frames", 0, "pipeline.queue_frames", true, "frames waiting for workers before drops (default 131072)",
         [](Config& c, const std::string& v) { c.pipeline.queue_frames = parse_number<std::size_t>(v, "queue frames", 1, 1u << 28); }},
        {"queue-bytes", 0, "pipeline.queue_bytes", true, "payload bytes waiting for workers before drops (default 67108864)",
         [](Config& c, const std::string& v) { c.pipeline.queue_bytes = parse_number<std::size_t>(v, "queue bytes", 1u << 20, std::size_t{1} << 40); }},
        {"overflow-dir", 0, "pipeline.overflow_dir", true, "frames the queues cannot hold wait in files here instead of being dropped",
         [](Config& c, const std::string& v) { c.pipeline.overflow_dir = v; }},
        {"overflow-max-bytes", 0, "pipeline.overflow_max_bytes", true, "size limit of the overflow files, bytes (default 4294967296)",
         [](Config& c, const std::string& v) { c.pipeline.overflow_max_bytes = parse_number<std::uint64_t>(v, "overflow max bytes", 1u << 20, std::uint64_t{1} << 50); }},
        {"storage-nice", 0, "pipeline.storage_nice", true, "nice value of decoding, pairing and storing (threads and local PostgreSQL backend), 0-19 (default 0)",
         [](Config& c, const std::string& v) { c.pipeline.storage.nice = parse_number<int>(v, "storage nice", 0, 19); }},
        {"storage-cgroup", 0, "pipeline.storage_cgroup", true, "cgroup directory (cpu.idle=1) for decoding, pairing and storing; ingest stays",
         [](Config& c, const std::string& v) { c.pipeline.storage.cgroup = v; }},
        {"storage-yield", 0, "pipeline.storage_yield", false,
         "pause storage while the local senders (named) wait for a CPU; frames wait in the overflow files",
         [](Config& c, const std::string& v) { c.pipeline.storage.yield = v != "false"; }},
        {"query-timeout", 0, "pipeline.query_timeout", true, "seconds a query waits for its response (default 10)",
         [](Config& c, const std::string& v) { c.pipeline.pairing.query_timeout = parse_seconds(v, "query timeout"); }},
        {"response-grace", 0, "pipeline.response_grace", true, "seconds a response waits for its query (default 1)",
         [](Config& c, const std::string& v) { c.pipeline.pairing.response_grace = parse_seconds(v, "response grace"); }},
        {"client-prefix-v4", 0, "privacy.client_prefix_v4", true, "bits of IPv4 client addresses kept (24: a /24; default 32)",
         [](Config& c, const std::string& v) { c.pipeline.privacy.client_prefix_v4 = parse_number<int>(v, "client prefix v4", 0, 32); }},
        {"client-prefix-v6", 0, "privacy.client_prefix_v6", true, "bits of IPv6 client addresses kept (56: a /56; default 128)",
         [](Config& c, const std::string& v) { c.pipeline.privacy.client_prefix_v6 = parse_number<int>(v, "client prefix v6", 0, 128); }},
        {"client-hash-key", 0, "privacy.client_hash_key", true, "replace client addresses by a keyed hash (HMAC-SHA256) with this key",
         [](Config& c, const std::string& v) { c.pipeline.privacy.hash_key = v; }},
        {"exclude-kind", 0, "privacy.exclude_kinds", true, "do not store messages of this kind: client, resolver, auth... (repeatable)",
         [](Config& c, const std::string& v) {
             static const std::vector<std::string> kinds = {"auth", "resolver", "client", "forwarder", "stub", "tool", "update"};
             if (std::find(kinds.begin(), kinds.end(), v) == kinds.end())
                 throw ConfigError("exclude kind: '" + v + "' is not one of auth, resolver, client, forwarder, stub, tool, update");
             c.pipeline.privacy.exclude_kinds.push_back(v);
         }},
        {"exclude-name", 0, "privacy.exclude_names", true, "do not store names at or under this suffix (repeatable)",
         [](Config& c, const std::string& v) { c.pipeline.privacy.exclude_names.push_back(v); }},
        {"no-decode", 0, "", false, "benchmark: count and discard frames without decoding (needs no store)",
         [](Config& c, const std::string&) { c.pipeline.decode = false; }},
        {"postgres", 0, "postgres.conninfo", true, "libpq conninfo or URI (PG* variables also work)",
         [](Config& c, const std::string& v) { pg(c).conninfo = v; }},
        {"queue-rows", 0, "postgres.queue_rows", true, "rows waiting for the database writer before drops (default 50000)",
         [](Config& c, const std::string& v) { pg(c).queue_rows = parse_number<std::size_t>(v, "queue rows", 1, 100'000'000); }},
        {"batch-rows", 0, "postgres.batch_rows", true, "rows the writer sends into the open COPY at a time (default 20000)",
         [](Config& c, const std::string& v) { pg(c).batch_rows = parse_number<std::size_t>(v, "batch rows", 1, 10'000'000); }},
        // Older configurations: rows are now sent as they come, and what bounds their delay
        // is the commit interval, so the old name sets that.
        {"flush-interval", 0, "postgres.flush_interval", true, "former name of --commit-interval",
         [](Config& c, const std::string& v) { pg(c).commit_interval = parse_seconds(v, "flush interval"); }},
        {"commit-interval", 0, "postgres.commit_interval", true, "seconds batches stream into one transaction before COMMIT (default 0.5)",
         [](Config& c, const std::string& v) { pg(c).commit_interval = parse_seconds(v, "commit interval"); }},
        {"pdns-max-delay", 0, "postgres.pdns_max_delay", true,
         "seconds the pdns upsert may wait under load, carried over transactions (default 5; 0: every COMMIT)",
         [](Config& c, const std::string& v) { pg(c).pdns_max_delay = parse_seconds(v, "pdns max delay"); }},
        {"partition", 0, "postgres.partition", true, "partition width: day or hour (default day)",
         [](Config& c, const std::string& v) {
             if (v == "day") pg(c).partition_width = PartitionWidth::day;
             else if (v == "hour") pg(c).partition_width = PartitionWidth::hour;
             else throw ConfigError("partition: '" + v + "' is not day or hour");
         }},
        {"partitions-ahead", 0, "postgres.partitions_ahead", true, "partitions created ahead (default 3)",
         [](Config& c, const std::string& v) { pg(c).partitions_ahead = parse_number<int>(v, "partitions ahead", 0, 1000); }},
        {"retention-days", 0, "postgres.retention_days", true, "days of exchanges kept, 0 for ever (default 30)",
         [](Config& c, const std::string& v) { pg(c).retention_days = parse_number<int>(v, "retention days", 0, 100000); }},
        {"spool-dir", 0, "postgres.spool_dir", true, "directory for batches while PostgreSQL is away",
         [](Config& c, const std::string& v) { pg(c).spool_dir = v; }},
        {"spool-max-bytes", 0, "postgres.spool_max_bytes", true, "spool size limit in bytes (default 1 GiB)",
         [](Config& c, const std::string& v) { pg(c).spool_max_bytes = parse_number<std::uint64_t>(v, "spool max bytes", 0, ~0ull); }},
        {"pdns", 0, "postgres.pdns", true, "maintain dnstap.pdns (default true)",
         [](Config& c, const std::string& v) { pg(c).pdns = parse_bool(v, "pdns"); }},
        {"shutdown-timeout", 0, "postgres.shutdown_timeout", true, "seconds to drain at exit (default 10)",
         [](Config& c, const std::string& v) { pg(c).shutdown_timeout = std::chrono::seconds(parse_number<int>(v, "shutdown timeout", 0, 3600)); }},
        {"write", 'w', "file.path", true, "Frame Streams file to write (strftime allowed with --split)",
         [](Config& c, const std::string& v) { file(c).path = v; }},
        {"split", 's', "file.split", true, "start a new file every N seconds",
         [](Config& c, const std::string& v) { file(c).split_seconds = parse_number<int>(v, "split", 1, 86400 * 366); }},
        {"localtime", 0, "file.localtime", false, "strftime in local time", [](Config& c, const std::string& v) { file(c).localtime = v != "false"; }},
        {"gmtime", 0, "", false, "strftime in UTC (default)", [](Config& c, const std::string&) { file(c).localtime = false; }},
        {"metrics", 0, "metrics.listen", true, "serve Prometheus metrics on HOST:PORT",
         [](Config& c, const std::string& v) { c.metrics_address = checked_metrics_address(v); }},
        {"tail-socket", 0, "tail.socket", true, "Unix socket where `tail` attaches",
         [](Config& c, const std::string& v) { c.tail_socket = v; }},
        {"from", 0, "", true, "window start (lookup, report): 2026-11-21[T10:00:00Z], unix seconds, or an age like 24h",
         [](Config& c, const std::string& v) { c.window_from = parse_time(v, "from"); }},
        {"to", 0, "", true, "window end (lookup, report)", [](Config& c, const std::string& v) { c.window_to = parse_time(v, "to"); }},
        {"limit", 0, "", true, "rows per table (report)", [](Config& c, const std::string& v) { c.limit = parse_number<int>(v, "limit", 1, 1'000'000); }},
        {"suffix", 0, "", true, "tail: only names at or under this suffix",
         [](Config& c, const std::string& v) { c.tail_suffix = v; }},
        {"client", 0, "", true, "tail: only this client address or network (CIDR)",
         [](Config& c, const std::string& v) { c.tail_client = v; }},
        {"rcode", 0, "", true, "tail: only this rcode, e.g. NXDOMAIN",
         [](Config& c, const std::string& v) { c.tail_rcode = v; }},
        {"log-level", 0, "log.level", true, "debug, info, warning or error",
         [](Config& c, const std::string& v) {
             if (v != "debug" && v != "info" && v != "warning" && v != "error")
                 throw ConfigError("log level: '" + v + "' is not debug, info, warning or error");
             c.log_level = v;
         }},
    };
    return all;
}

const Option* find_flag(std::string_view arg) {
    for (const auto& o : options()) {
        if (arg.size() > 2 && arg.starts_with("--") && arg.substr(2) == o.flag) return &o;
        if (arg.size() == 2 && arg[0] == '-' && o.short_flag && arg[1] == o.short_flag) return &o;
    }
    return nullptr;
}

std::string node_to_string(const toml::node& node, const std::string& where) {
    if (auto s = node.value<std::string>(); s && node.is_string()) return *s;
    if (node.is_integer()) return std::to_string(*node.value<std::int64_t>());
    if (node.is_floating_point()) {
        std::ostringstream out;
        out << *node.value<double>();
        return out.str();
    }
    if (node.is_boolean()) return *node.value<bool>() ? "true" : "false";
    throw ConfigError(where + ": unsupported value type");
}

void apply_toml(Config& config, const std::string& path) {
    toml::table root;
    try {
        root = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
        std::ostringstream msg;
        msg << path << ':' << e.source().begin.line << ": " << e.description();
        throw ConfigError(msg.str());
    }
    for (auto&& [section, section_node] : root) {
        auto* table = section_node.as_table();
        const auto line = section_node.source().begin.line;
        if (!table) throw ConfigError(path + ":" + std::to_string(line) + ": '" + std::string(section.str()) + "' must be a [section]");
        for (auto&& [key, node] : *table) {
            const std::string full = std::string(section.str()) + "." + std::string(key.str());
            const std::string where = path + ":" + std::to_string(node.source().begin.line) + ": " + full;
            const Option* option = nullptr;
            for (const auto& o : options())
                if (o.key == full) option = &o;
            if (!option) throw ConfigError(where + ": unknown key");
            try {
                if (auto* array = node.as_array()) {
                    for (auto&& element : *array) option->set(config, node_to_string(element, where));
                } else {
                    option->set(config, node_to_string(node, where));
                }
            } catch (const ConfigError& e) {
                throw ConfigError(where + ": " + e.what());
            }
        }
    }
}

const std::vector<std::string_view> commands = {"serve", "import", "read", "migrate", "lookup", "tail", "report"};

}  // namespace

std::string usage() {
    std::ostringstream out;
    out << "usage: dnstap-collector [COMMAND] [OPTIONS] [ARGS]\n\n"
           "commands:\n"
           "  serve              receive dnstap (default): -u PATH, -a HOST:PORT, --postgres, -w FILE\n"
           "  import FILE...     feed Frame Streams files through the same pipeline\n"
           "  read FILE          print messages like dnstap-read (--json for JSON)\n"
           "  migrate            apply the schema migrations\n"
           "  lookup QUERY       passive-DNS lookup: NAME, *.SUFFIX, IP or CIDR (COF NDJSON)\n"
           "  tail               live view of what a running collector receives\n"
           "  report             top names, clients and rcodes over a window\n\noptions:\n";
    for (const auto& o : options()) {
        std::string left = "  ";
        if (o.short_flag) left += std::string("-") + o.short_flag + ", ";
        left += "--" + std::string(o.flag) + (o.takes_value ? " VALUE" : "");
        if (left.size() < 30) left.resize(30, ' ');
        out << left << ' ' << o.help;
        if (!o.key.empty()) out << " [" << o.key << "]";
        out << '\n';
    }
    return out.str();
}

Config parse_command_line(int argc, char** argv) {
    Config config;
    std::vector<std::string> args(argv + 1, argv + argc);
    std::size_t i = 0;
    if (!args.empty() && !args[0].starts_with("-")) {
        bool known = false;
        for (auto c : commands) known = known || args[0] == c;
        if (!known) throw ConfigError("unknown command '" + args[0] + "'\n" + usage());
        config.command = args[0];
        i = 1;
    }
    // The file comes first so that flags override it, wherever --config stands.
    for (std::size_t j = i; j + 1 < args.size(); ++j)
        if (args[j] == "--config") apply_toml(config, args[j + 1]);

    for (; i < args.size(); ++i) {
        const std::string& arg = args[i];
        if (arg == "-h" || arg == "--help") throw ConfigError(usage());
        if (arg == "--") {
            config.arguments.insert(config.arguments.end(), args.begin() + static_cast<long>(i) + 1, args.end());
            break;
        }
        if (!arg.starts_with("-") || arg == "-") {
            config.arguments.push_back(arg);
            continue;
        }
        std::string name = arg, value;
        bool inline_value = false;
        if (auto eq = arg.find('='); arg.starts_with("--") && eq != std::string::npos) {
            name = arg.substr(0, eq);
            value = arg.substr(eq + 1);
            inline_value = true;
        }
        const Option* option = find_flag(name);
        if (!option) throw ConfigError("unknown option '" + name + "' (see --help)");
        if (option->takes_value && !inline_value) {
            if (i + 1 >= args.size()) throw ConfigError("option " + name + " needs a value");
            value = args[++i];
        }
        if (option->flag == "config") continue;  // already applied
        try {
            option->set(config, value);
        } catch (const ConfigError& e) {
            throw ConfigError("option " + name + ": " + e.what());
        }
    }

    // fstrm_capture style: -a HOST -p PORT.
    for (auto& tcp : config.ingest.tcp)
        if (tcp.port == 0) {
            if (!config.tcp_port) throw ConfigError("TCP listener " + tcp.host + " needs a port (-a HOST:PORT or -p PORT)");
            tcp.port = *config.tcp_port;
        }
    for (auto& u : config.ingest.unix_sockets) {
        if (config.socket_mode) u.mode = *config.socket_mode;
        u.group = config.socket_group;
    }
    if (config.command == "serve" && !config.check_only && config.ingest.unix_sockets.empty() &&
        config.ingest.tcp.empty() && !config.ingest.systemd_sockets)
        throw ConfigError("serve needs at least one listener (-u PATH or -a HOST:PORT)");
    return config;
}

}  // namespace dnstap_collector
