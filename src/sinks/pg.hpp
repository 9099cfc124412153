// Thin RAII owners for libpq's PGconn and PGresult, and the one place where libpq results
// become exceptions carrying the server's message and SQLSTATE.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace dnstap_collector::pg {

struct Error : std::runtime_error {
    Error(const std::string& message, std::string state, bool lost, bool interrupted_ = false)
        : std::runtime_error(message), sqlstate(std::move(state)), connection_lost(lost),
          interrupted(interrupted_) {}
    std::string sqlstate;   // e.g. "23514"; empty when the error did not come from the server
    bool connection_lost;   // the connection is unusable: reconnect, do not retry the rows alone
    // We cancelled the statement (wake fd, or it stalled past the limit): nothing is wrong
    // with the rows, so do not retry them in parts; the connection is abandoned (lost too).
    bool interrupted;
};

// What may cut a wait on the server short. Every statement is sent asynchronously and the
// connection waits in poll() on its socket and on `wake_fd`:
//  - wake_fd readable (an eventfd the owner writes, e.g. at the shutdown deadline): the
//    running statement is cancelled (PQcancel), and its result awaited at most `grace`;
//  - no answer after `stall` (0: no limit): logged ("database write stalled N s"), then
//    cancelled the same way.
// Either way the call throws Error with interrupted and connection_lost set, unless the
// server answered first. A result that never comes within the grace leaves the outcome
// unknown; the connection is given up all the same.
struct WaitBounds {
    int wake_fd = -1;
    std::chrono::milliseconds stall{0};
    std::chrono::milliseconds grace{2000};
    const char* wake_reason = "interrupted";  // for the error message
};

class Result {
public:
    Result() noexcept = default;
    explicit Result(PGresult* r) noexcept : r_(r) {}
    ~Result() { if (r_) PQclear(r_); }
    Result(Result&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
    Result& operator=(Result&& o) noexcept {
        if (this != &o) { if (r_) PQclear(r_); r_ = o.r_; o.r_ = nullptr; }
        return *this;
    }
    Result(const Result&) = delete;
    Result& operator=(const Result&) = delete;

    PGresult* get() const noexcept { return r_; }
    PGresult* release() noexcept { PGresult* r = r_; r_ = nullptr; return r; }
    int rows() const noexcept { return r_ ? PQntuples(r_) : 0; }
    bool is_null(int row, int col) const noexcept { return PQgetisnull(r_, row, col) != 0; }
    std::string_view value(int row, int col) const noexcept {
        return {PQgetvalue(r_, row, col), static_cast<std::size_t>(PQgetlength(r_, row, col))};
    }
    std::optional<std::string> text(int row, int col) const {
        if (is_null(row, col)) return std::nullopt;
        return std::string(value(row, col));
    }

private:
    PGresult* r_ = nullptr;
};

// Throws Error unless `r` has an ok status (command, tuples, or COPY IN). Takes ownership.
Result check(PGconn* conn, PGresult* r, std::string_view what);

class Connection {
public:
    // Connects (connect_timeout 10 s unless the conninfo says otherwise). Throws Error naming
    // the host and libpq's reason, never the password.
    // With bounds, the connection attempt itself is interruptible through wake_fd too.
    static Connection open(const std::string& conninfo, const WaitBounds& bounds = {});

    Connection(Connection&& o) noexcept : c_(o.c_), bounds_(o.bounds_), cancelled_(o.cancelled_) { o.c_ = nullptr; }
    Connection& operator=(Connection&& o) noexcept {
        if (this != &o) {
            if (c_) PQfinish(c_);
            c_ = o.c_;
            bounds_ = o.bounds_;
            cancelled_ = o.cancelled_;
            o.c_ = nullptr;
        }
        return *this;
    }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;
    ~Connection() { if (c_) PQfinish(c_); }

    PGconn* get() const noexcept { return c_; }
    bool ok() const noexcept { return c_ && PQstatus(c_) == CONNECTION_OK; }
    std::string describe() const;  // "host:port/dbname"
    void set_bounds(const WaitBounds& b) noexcept { bounds_ = b; }
    const WaitBounds& bounds() const noexcept { return bounds_; }

    Result exec(const char* sql);
    // Text parameters; std::nullopt is SQL NULL. Values never become part of the SQL text.
    Result exec_params(const char* sql, const std::vector<std::optional<std::string>>& params);
    // COPY ... FROM STDIN with `data` as the whole payload; throws on any failure.
    void copy_in(const std::string& sql, std::string_view data) { copy_in(sql, {data}); }
    // The same with the payload in pieces (header, rows, trailer: no copy into one buffer).
    void copy_in(const std::string& sql, std::initializer_list<std::string_view> pieces);
    // A COPY ... FROM STDIN kept open across calls, so that rows stream to the server as they
    // are encoded: copy_begin, any number of copy_put, then copy_end (which throws when the
    // server rejected a row: it reports errors only at the end of the COPY).
    void copy_begin(const std::string& sql);
    // Sends `data`; with flush, returns once libpq holds none of it (the server has it or
    // the kernel's socket buffer does), so nothing lingers while the caller waits for more.
    void copy_put(std::string_view data, bool flush = true);
    void copy_end();
    // ROLLBACK that never throws: used on error paths where the transaction may be dead.
    void rollback() noexcept;

private:
    explicit Connection(PGconn* c) noexcept : c_(c) {}
    // Sends what libpq buffered and waits until a result can be read without blocking;
    // throws as WaitBounds describes.
    void await(std::string_view what);
    // Every result of the statement sent last: the first error if any, else the last (as
    // PQexec does); stops at a COPY state.
    PGresult* collect(std::string_view what);
    [[noreturn]] void fail_send(std::string_view what);
    void begin(std::string_view what);               // before each statement
    Result finish(PGresult* r, std::string_view what);  // check(), told about a cancel
    void cancel(const char* why, std::string_view what);
    PGconn* c_ = nullptr;
    WaitBounds bounds_;
    // The statement under way: when it was sent, whether we cancelled it and why.
    std::chrono::steady_clock::time_point sent_at_{};
    std::chrono::steady_clock::time_point give_up_at_{};
    const char* cancelled_ = nullptr;
};

// "host:port/dbname" of a conninfo without connecting (for messages about a failed attempt).
std::string describe_conninfo(const std::string& conninfo);

// Quoted identifier for names we generate ourselves (partitions); quoted all the same.
std::string quote_ident(std::string_view identifier);

}  // namespace dnstap_collector::pg
