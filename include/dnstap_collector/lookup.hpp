// Queries for the `lookup` and `report` subcommands, over dnstap.pdns and dnstap.exchange.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <ostream>
#include <string>

namespace dnstap_collector {

// A time window; an unset end is unbounded (report: `from` defaults to 24 hours ago).
struct LookupWindow {
    std::optional<std::chrono::sys_seconds> from, to;
};

enum class LookupKind { name, suffix, address, network, rdata_name };
// What a query string asks for: "www.example.com" (name), "*.example.com" (every name below
// example.com), "192.0.2.1" / "2001:db8::1" (records with that address), "192.0.2.0/24"
// (records inside the network), "rdata:ns1.example.net" (records whose data is that name).
LookupKind classify_lookup(const std::string& query);

// Prints passive DNS records as Common Output Format NDJSON, one object per line: rrname,
// rrtype, rdata, time_first, time_last (unix seconds), count, bailiwick, sensor_id (the last
// two only when known). Returns 0 when records were found, 1 when none (like grep).
// Throws std::runtime_error when the database cannot be reached or queried.
int run_lookup(const std::string& conninfo, const std::string& query, const LookupWindow& w,
               std::ostream& out);

// Text tables for the window: top names, top clients, rcode counts, and the names with the
// most NXDOMAIN and SERVFAIL answers; `limit` rows per table. Returns 0; throws like
// run_lookup.
int run_report(const std::string& conninfo, const LookupWindow& w, std::size_t limit, std::ostream& out);

}  // namespace dnstap_collector
