#include "sinks/pg.hpp"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "dnstap_collector/log.hpp"

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

using Clock = std::chrono::steady_clock;

// Milliseconds from now until `t` for poll(): -1 for "no limit", at least 1 otherwise.
int poll_timeout(Clock::time_point t) {
    if (t == Clock::time_point::max()) return -1;
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(t - Clock::now()).count();
    return static_cast<int>(std::clamp<long long>(ms, 0, 60'000));
}

bool readable(int fd) {
    if (fd < 0) return false;
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
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

Connection Connection::open(const std::string& conninfo, const WaitBounds& bounds) {
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
    // Asynchronous connect (PQconnectPoll), so that the wake fd can cut it short; libpq
    // enforces connect_timeout only in its blocking connect, so it is applied here.
    Connection c(PQconnectStartParams(keys, values, 1));
    if (!c.c_) throw Error("cannot connect to PostgreSQL: out of memory", "", true);
    auto fail = [&](const std::string& reason) {
        throw Error("cannot connect to PostgreSQL at " + describe_conninfo(conninfo) + ": " + reason, "", true);
    };
    if (PQstatus(c.c_) == CONNECTION_BAD) fail(trimmed(PQerrorMessage(c.c_)));
    int timeout_s = 10;
    if (PQconninfoOption* opts = PQconninfo(c.c_)) {
        for (PQconninfoOption* o = opts; o->keyword; ++o)
            if (std::string_view(o->keyword) == "connect_timeout" && o->val) timeout_s = std::atoi(o->val);
        PQconninfoFree(opts);
    }
    Clock::time_point deadline = Clock::time_point::max();
    if (timeout_s > 0) deadline = Clock::now() + std::chrono::seconds(std::max(timeout_s, 2));
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    for (;;) {
        if (st == PGRES_POLLING_OK) break;
        if (st == PGRES_POLLING_FAILED) fail(trimmed(PQerrorMessage(c.c_)));
        pollfd fds[2] = {{PQsocket(c.c_), static_cast<short>(st == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0},
                         {bounds.wake_fd, POLLIN, 0}};
        int n = ::poll(fds, 2, poll_timeout(deadline));
        if (n < 0 && errno != EINTR) fail(std::string("poll: ") + std::strerror(errno));
        if (fds[1].revents & POLLIN) fail(std::string("connection attempt ") + bounds.wake_reason);
        if (n == 0 && Clock::now() >= deadline) fail("timeout expired");
        if (n > 0) st = PQconnectPoll(c.c_);
    }
    if (PQsetnonblocking(c.c_, 1) != 0) fail("cannot set non-blocking mode: " + trimmed(PQerrorMessage(c.c_)));
    c.bounds_ = bounds;
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

void Connection::fail_send(std::string_view what) {
    std::string reason = trimmed(PQerrorMessage(c_));
    if (reason.empty()) reason = "connection lost";
    throw Error(std::string(what) + ": " + reason, "", true);
}

void Connection::begin(std::string_view what) {
    cancelled_ = nullptr;
    // Past the wake (shutdown deadline): start nothing new.
    if (readable(bounds_.wake_fd))
        throw Error(std::string(what) + ": not started: " + bounds_.wake_reason, "57014", true, true);
    sent_at_ = Clock::now();
    give_up_at_ = Clock::time_point::max();
}

void Connection::cancel(const char* why, std::string_view what) {
    cancelled_ = why;
    give_up_at_ = Clock::now() + bounds_.grace;
    char err[256] = "";
    PGcancel* handle = PQgetCancel(c_);
    if (!handle || !PQcancel(handle, err, sizeof err))
        log::warning(std::string("cannot cancel ") + std::string(what) + ": " + (*err ? err : "no cancel handle"));
    if (handle) PQfreeCancel(handle);
}

void Connection::await(std::string_view what) {
    for (;;) {
        int flushed = PQflush(c_);  // 0: all sent, 1: more to send, -1: error
        if (flushed < 0) fail_send(what);
        if (!PQconsumeInput(c_)) fail_send(what);
        if (flushed == 0 && !PQisBusy(c_)) return;
        Clock::time_point now = Clock::now();
        Clock::time_point until = give_up_at_;
        if (cancelled_) {
            if (now >= give_up_at_)
                throw Error(std::string(what) + ": " + cancelled_ + "; no answer to the cancel either, connection given up",
                            "57014", true, true);
        } else if (bounds_.stall.count() > 0) {
            Clock::time_point stall_at = sent_at_ + bounds_.stall;
            if (now >= stall_at) {
                auto s = std::chrono::duration_cast<std::chrono::seconds>(now - sent_at_).count();
                log::warning("database write stalled " + std::to_string(s) + " s (" + std::string(what) +
                             "): cancelling it");
                cancel("stalled, cancelled", what);
                continue;
            }
            until = stall_at;
        }
        pollfd fds[2] = {{PQsocket(c_), static_cast<short>(POLLIN | (flushed == 1 ? POLLOUT : 0)), 0},
                         {cancelled_ ? -1 : bounds_.wake_fd, POLLIN, 0}};
        int n = ::poll(fds, 2, poll_timeout(until));
        if (n < 0 && errno != EINTR) fail_send(what);
        if (n > 0 && (fds[1].revents & POLLIN)) cancel(bounds_.wake_reason, what);
    }
}

PGresult* Connection::collect(std::string_view what) {
    Result keep;
    for (;;) {
        await(what);
        PGresult* r = PQgetResult(c_);
        if (!r) break;
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) return r;
        if (keep.get() && PQresultStatus(keep.get()) == PGRES_FATAL_ERROR) PQclear(r);
        else keep = Result(r);
    }
    return keep.release();
}

Result Connection::finish(PGresult* r, std::string_view what) {
    try {
        return check(c_, r, what);
    } catch (const Error& e) {
        // The server's answer to our cancel ("canceling statement due to user request"):
        // say why, and give the connection up like a lost one.
        if (cancelled_) throw Error(std::string(e.what()) + " (" + cancelled_ + ")", e.sqlstate, true, true);
        throw;
    }
}

Result Connection::exec(const char* sql) {
    std::string what = label(sql);
    begin(what);
    if (!PQsendQuery(c_, sql)) fail_send(what);
    return finish(collect(what), what);
}

Result Connection::exec_params(const char* sql, const std::vector<std::optional<std::string>>& params) {
    std::string what = label(sql);
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
    begin(what);
    if (!PQsendQueryParams(c_, sql, static_cast<int>(values.size()), nullptr, values.data(), nullptr, nullptr, 0))
        fail_send(what);
    return finish(collect(what), what);
}

void Connection::copy_in(const std::string& sql, std::initializer_list<std::string_view> pieces) {
    copy_begin(sql);
    for (std::string_view data : pieces) copy_put(data, false);
    copy_end();
}

void Connection::copy_begin(const std::string& sql) {
    std::string what = label(sql);
    begin(what);
    if (!PQsendQuery(c_, sql.c_str())) fail_send(what);
    finish(collect(what), what);  // PGRES_COPY_IN
}

void Connection::copy_put(std::string_view data, bool flush) {
    // The stall limit counts from the last progress, not from the start of a COPY that
    // stays open across batches.
    sent_at_ = Clock::now();
    // 64 KiB pieces: libpq buffers what the socket does not take at once and, each time it
    // sends part of its buffer, moves the rest to the front; with pieces of a MiB that move
    // cost more CPU than the send. await() flushes (within the bounds) before the next
    // piece, so libpq's buffer stays at about one piece.
    constexpr std::size_t chunk = 64 << 10;
    for (std::size_t off = 0; off < data.size(); off += chunk) {
        std::size_t n = std::min(chunk, data.size() - off);
        int rc;
        while ((rc = PQputCopyData(c_, data.data() + off, static_cast<int>(n))) == 0) await("COPY");
        if (rc < 0) fail_send("COPY");
        if (n == chunk) await("COPY");  // small pieces (header, trailer) just join the buffer
    }
    if (flush) await("COPY");
}

void Connection::copy_end() {
    int rc;
    while ((rc = PQputCopyEnd(c_, nullptr)) == 0) await("COPY");
    if (rc < 0) fail_send("COPY");
    // The COPY's own result carries the error (e.g. a rejected row).
    finish(collect("COPY"), "COPY");
}

void Connection::rollback() noexcept {
    if (!c_ || PQstatus(c_) != CONNECTION_OK) return;
    if (PQtransactionStatus(c_) == PQTRANS_IDLE) return;
    try {
        exec("ROLLBACK");
    } catch (const std::exception&) {
        // The caller finds out on its next statement (or has given the connection up).
    }
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
