#include "dnstap_collector/lookup.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <vector>

#include "sinks/copy_encoder.hpp"
#include "sinks/pg.hpp"

namespace dnstap_collector {
namespace {

bool parses_as(int family, const std::string& s) {
    unsigned char buf[16];
    return inet_pton(family, s.c_str(), buf) == 1;
}

bool is_address(const std::string& s) { return parses_as(AF_INET, s) || parses_as(AF_INET6, s); }

std::optional<std::string> unix_param(const std::optional<std::chrono::sys_seconds>& t) {
    if (!t) return std::nullopt;
    return std::to_string(t->time_since_epoch().count());
}

std::string json_string(std::string_view s) {
    std::string out;
    append_json_string(out, copy::sanitize_text(s, false));
    return out;
}

}  // namespace

LookupKind classify_lookup(const std::string& q) {
    if (q.starts_with("rdata:")) return LookupKind::rdata_name;
    if (auto slash = q.find('/'); slash != std::string::npos) {
        std::string prefix = q.substr(slash + 1);
        if (is_address(q.substr(0, slash)) && !prefix.empty() && prefix.size() <= 3 &&
            std::all_of(prefix.begin(), prefix.end(), [](char c) { return c >= '0' && c <= '9'; }))
            return LookupKind::network;
    }
    if (is_address(q)) return LookupKind::address;
    if (q.starts_with("*.")) return LookupKind::suffix;
    return LookupKind::name;
}

int run_lookup(const std::string& conninfo, const std::string& query, const LookupWindow& w,
               std::ostream& out) {
    LookupKind kind = classify_lookup(query);
    std::string value = kind == LookupKind::rdata_name ? query.substr(6) : query;
    // Both functions take the same parameters; which one is fixed SQL text, never pasted input.
    const char* sql =
        kind == LookupKind::name || kind == LookupKind::suffix
            ? "SELECT rrname, rrtype, rdata, extract(epoch FROM time_first)::bigint,"
              " extract(epoch FROM time_last)::bigint, count, bailiwick, sensor_id"
              " FROM dnstap.pdns_name($1, to_timestamp($2::bigint), to_timestamp($3::bigint))"
              " ORDER BY time_last DESC, rrname, rrtype, rdata"
            : "SELECT rrname, rrtype, rdata, extract(epoch FROM time_first)::bigint,"
              " extract(epoch FROM time_last)::bigint, count, bailiwick, sensor_id"
              " FROM dnstap.pdns_rdata($1, to_timestamp($2::bigint), to_timestamp($3::bigint))"
              " ORDER BY time_last DESC, rrname, rrtype, rdata";
    pg::Connection c = pg::Connection::open(conninfo);
    pg::Result r = c.exec_params(sql, {value, unix_param(w.from), unix_param(w.to)});
    for (int i = 0; i < r.rows(); ++i) {
        std::string line = "{\"rrname\":" + json_string(r.value(i, 0)) + ",\"rrtype\":" + json_string(r.value(i, 1)) +
                           ",\"rdata\":" + json_string(r.value(i, 2)) + ",\"time_first\":" + std::string(r.value(i, 3)) +
                           ",\"time_last\":" + std::string(r.value(i, 4)) + ",\"count\":" + std::string(r.value(i, 5));
        if (!r.is_null(i, 6)) line += ",\"bailiwick\":" + json_string(r.value(i, 6));
        if (!r.is_null(i, 7)) line += ",\"sensor_id\":" + json_string(r.value(i, 7));
        out << line << "}\n";
    }
    out.flush();
    return r.rows() > 0 ? 0 : 1;
}

namespace {

// A result as an aligned text table under a title; numbers (the last column) right-aligned.
void print_table(std::ostream& out, const std::string& title, const std::vector<std::string>& headers,
                 const pg::Result& r) {
    out << title << "\n";
    std::size_t cols = headers.size();
    std::vector<std::vector<std::string>> cells;
    for (int i = 0; i < r.rows(); ++i) {
        std::vector<std::string> row;
        for (std::size_t c = 0; c < cols; ++c)
            row.push_back(r.is_null(i, static_cast<int>(c)) ? "-" : copy::sanitize_text(r.value(i, static_cast<int>(c)), false));
        cells.push_back(std::move(row));
    }
    std::vector<std::size_t> width(cols);
    for (std::size_t c = 0; c < cols; ++c) {
        width[c] = headers[c].size();
        for (const auto& row : cells) width[c] = std::max(width[c], row[c].size());
    }
    auto line = [&](const std::vector<std::string>& row) {
        std::string s = "  ";
        for (std::size_t c = 0; c < cols; ++c) {
            std::string pad(width[c] - row[c].size(), ' ');
            s += c + 1 == cols ? pad + row[c] : row[c] + pad + "  ";
        }
        out << s << "\n";
    };
    line(headers);
    std::vector<std::string> rule;
    for (std::size_t c = 0; c < cols; ++c) rule.emplace_back(width[c], '-');
    line(rule);
    for (const auto& row : cells) line(row);
    if (cells.empty()) out << "  (none)\n";
    out << "\n";
}

}  // namespace

int run_report(const std::string& conninfo, const LookupWindow& w, std::size_t limit, std::ostream& out) {
    pg::Connection c = pg::Connection::open(conninfo);
    auto from = w.from ? *w.from
                       : std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now()) - std::chrono::hours(24);
    std::vector<std::optional<std::string>> params = {unix_param(from), unix_param(w.to), std::to_string(limit)};
    // $1/$2 bound the window (no upper bound when $2 is NULL), $3 is the row limit.
    constexpr const char* where = " WHERE time >= to_timestamp($1::bigint)"
                                  " AND ($2::bigint IS NULL OR time < to_timestamp($2::bigint))";
    auto query = [&](const std::string& sql) { return c.exec_params(sql.c_str(), params); };

    pg::Result window = query("SELECT to_char(to_timestamp($1::bigint) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),"
                              " coalesce(to_char(to_timestamp($2::bigint) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), 'now'),"
                              " (SELECT count(*) FROM dnstap.exchange" + std::string(where) + "), $3::int");
    out << "dnstap report " << window.value(0, 0) << " .. " << window.value(0, 1) << " UTC: "
        << window.value(0, 2) << " exchanges\n\n";

    print_table(out, "Top names", {"qname", "queries"},
                query(std::string("SELECT qname, count(*) FROM dnstap.exchange") + where +
                      " AND qname IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $3::int"));
    // Resolver/forwarder messages carry our own address as the querier: not clients.
    print_table(out, "Top clients", {"client", "queries"},
                query(std::string("SELECT host(query_address), count(*) FROM dnstap.exchange") + where +
                      " AND coalesce(kind, '') NOT IN ('resolver', 'forwarder') AND query_address IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $3::int"));
    print_table(out, "Response codes", {"rcode", "responses"},
                query(std::string("SELECT rcode, count(*) FROM dnstap.exchange") + where +
                      " AND has_response GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $3::int"));
    print_table(out, "NXDOMAIN by name", {"qname", "responses"},
                query(std::string("SELECT qname, count(*) FROM dnstap.exchange") + where +
                      " AND rcode = 'NXDOMAIN' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $3::int"));
    print_table(out, "SERVFAIL by name", {"qname", "responses"},
                query(std::string("SELECT qname, count(*) FROM dnstap.exchange") + where +
                      " AND rcode = 'SERVFAIL' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $3::int"));
    out.flush();
    return 0;
}

}  // namespace dnstap_collector
