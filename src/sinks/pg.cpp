#include "sinks/pg.hpp"

#include <algorithm>
#include <cstdlib>

namespace dnstap_collector::pg {
namespace {

// One line: libpq messages span lines ("DETAIL:", tab-indented hints).
std::string trimmed(const char* s) {
    std::string out;
    for (const char* p = s ? s : ""; *p; ++p) {
        bool space = *p == '\n' || *p == '\t' || *p == ' ' || *p == '\r';
        if (!space) out += *p;
        else if (!out.empty() && out.back() != ' ') out += ' ';
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out;
}

// The server's message, its detail shortened (for a rejected row the detail is the whole row,
// client addresses included) and where it happened ("COPY exchange, line 18").
std::string server_message(const PGresult* r) {
    const char* primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    if (!primary) return trimmed(PQresultErrorMessage(r));
    std::string out = trimmed(primary);
    if (const char* detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL)) {
        std::string d = trimmed(detail);
        if (d.size() > 120) d = d.substr(0, 120) + "...";
        out += " (" + d + ")";
    }
    if (const char* context = PQresultErrorField(r, PG_DIAG_CONTEXT)) out += " [" + trimmed(context) + "]";
    return out;
}

// Statement text for error messages: the first line, shortened (migrations are long).
std::string label(std::string_view sql) {
    std::string_view first = sql.substr(0, sql.find('\n'));
    if (first.size() > 80) return std::string(first.substr(0, 80)) + "...";
    return std::string(first);
}

bool lost_state(std::string_view state) {
    // 08: connection exception; 57P01..03: server shutting down / cannot connect now.
    return state.starts_with("08") || state == "57P01" || state == "57P02" || state == "57P03";
}

}  // namespace

Result check(PGconn* conn, PGresult* raw, std::string_view what) {
    Result r(raw);
    ExecStatusType st = raw ? PQresultStatus(raw) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_COPY_IN) return r;
    std::string state;
    std::string message;
    if (raw) {
        if (const char* s = PQresultErrorField(raw, PG_DIAG_SQLSTATE)) state = s;
        message = server_message(raw);
    }
    if (message.empty()) message = trimmed(PQerrorMessage(conn));
    if (message.empty()) message = PQresStatus(st);
    bool lost = PQstatus(conn) != CONNECTION_OK || lost_state(state);
    throw Error(std::string(what) + ": " + message, state, lost);
}

std::string describe_conninfo(const std::string& conninfo) {
    char* err = nullptr;
    PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
    if (!opts) {
        std::string reason = trimmed(err);
        PQfreemem(err);
        return "(bad conninfo: " + reason + ")";
    }
    std::string host, port, db;
    for (PQconninfoOption* o = opts; o->keyword; ++o) {
        if (!o->val) continue;
        std::string_view k = o->keyword;
        if (k == "host" || (k == "hostaddr" && host.empty())) host = o->val;
        else if (k == "port") port = o->val;
        else if (k == "dbname") db = o->val;
    }
    PQconninfoFree(opts);
    // Unset fields fall back to the PG* environment, as libpq does.
    auto env = [](const char* name, std::string& v) { if (v.empty()) if (const char* e = std::getenv(name)) v = e; };
    env("PGHOST", host);
    env("PGPORT", port);
    env("PGDATABASE", db);
    if (host.empty()) host = "local socket";
    return host + (port.empty() ? "" : ":" + port) + (db.empty() ? "" : "/" + db);
}

Connection Connection::open(const std::string& conninfo) {
    // Defaults first: keywords later in the arrays (the expanded conninfo) override them.
    const char* keys[] = {"connect_timeout", "application_name", "dbname", nullptr};
    const char* values[] = {"10", "dnstap-collector", conninfo.c_str(), nullptr};
    char* parse_error = nullptr;
    if (PQconninfoOption* parsed = PQconninfoParse(conninfo.c_str(), &parse_error)) {
        PQconninfoFree(parsed);
    } else {
        std::string reason = parse_error ? trimmed(parse_error) : "out of memory";
        PQfreemem(parse_error);
        throw Error("invalid PostgreSQL conninfo: " + reason, "", true);
    }
    Connection c(PQconnectdbParams(keys, values, 1));
    if (!c.c_) throw Error("cannot connect to PostgreSQL: out of memory", "", true);
    if (PQstatus(c.c_) != CONNECTION_OK) {
        std::string where = describe_conninfo(conninfo);
        throw Error("cannot connect to PostgreSQL at " + where + ": " + trimmed(PQerrorMessage(c.c_)),
                    "", true);
    }
    // Timestamps are sent in binary (UTC microseconds); text output for reports stays UTC.
    c.exec("SET TIME ZONE 'UTC'");
    return c;
}

std::string Connection::describe() const {
    if (!c_) return "(not connected)";
    const char* host = PQhost(c_);
    const char* port = PQport(c_);
    const char* db = PQdb(c_);
    std::string out = host && *host ? host : "local socket";
    if (port && *port) out += std::string(":") + port;
    if (db && *db) out += std::string("/") + db;
    return out;
}

Result Connection::exec(const char* sql) { return check(c_, PQexec(c_, sql), label(sql)); }

Result Connection::exec_params(const char* sql, const std::vector<std::optional<std::string>>& params) {
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
    return check(c_, PQexecParams(c_, sql, static_cast<int>(values.size()), nullptr, values.data(),
                                  nullptr, nullptr, 0),
                 label(sql));
}

void Connection::copy_in(const std::string& sql, std::string_view data) {
    check(c_, PQexec(c_, sql.c_str()), label(sql));
    constexpr std::size_t chunk = 1 << 20;
    bool sent = true;
    for (std::size_t off = 0; off < data.size() && sent; off += chunk) {
        std::size_t n = std::min(chunk, data.size() - off);
        sent = PQputCopyData(c_, data.data() + off, static_cast<int>(n)) == 1;
    }
    if (sent) sent = PQputCopyEnd(c_, nullptr) == 1;
    if (!sent) throw Error("COPY: " + trimmed(PQerrorMessage(c_)), "", true);
    // The COPY's own result carries the error (e.g. a rejected row); drain the rest.
    PGresult* first = PQgetResult(c_);
    while (PGresult* extra = PQgetResult(c_)) PQclear(extra);
    check(c_, first, "COPY");
}

void Connection::rollback() noexcept {
    if (!c_ || PQstatus(c_) != CONNECTION_OK) return;
    if (PQtransactionStatus(c_) == PQTRANS_IDLE) return;
    PQclear(PQexec(c_, "ROLLBACK"));
}

std::string quote_ident(std::string_view identifier) {
    std::string out = "\"";
    for (char ch : identifier) {
        if (ch == '"') out += '"';
        out += ch;
    }
    return out + "\"";
}

}  // namespace dnstap_collector::pg
