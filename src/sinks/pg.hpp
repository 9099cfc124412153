// Thin RAII owners for libpq's PGconn and PGresult, and the one place where libpq results
// become exceptions carrying the server's message and SQLSTATE.
#pragma once

#include <libpq-fe.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace dnstap_collector::pg {

struct Error : std::runtime_error {
    Error(const std::string& message, std::string state, bool lost)
        : std::runtime_error(message), sqlstate(std::move(state)), connection_lost(lost) {}
    std::string sqlstate;   // e.g. "23514"; empty when the error did not come from the server
    bool connection_lost;   // the connection is unusable: reconnect, do not retry the rows alone
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
    static Connection open(const std::string& conninfo);

    Connection(Connection&& o) noexcept : c_(o.c_) { o.c_ = nullptr; }
    Connection& operator=(Connection&& o) noexcept {
        if (this != &o) { if (c_) PQfinish(c_); c_ = o.c_; o.c_ = nullptr; }
        return *this;
    }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;
    ~Connection() { if (c_) PQfinish(c_); }

    PGconn* get() const noexcept { return c_; }
    bool ok() const noexcept { return c_ && PQstatus(c_) == CONNECTION_OK; }
    std::string describe() const;  // "host:port/dbname"

    Result exec(const char* sql);
    // Text parameters; std::nullopt is SQL NULL. Values never become part of the SQL text.
    Result exec_params(const char* sql, const std::vector<std::optional<std::string>>& params);
    // COPY ... FROM STDIN with `data` as the whole payload; throws on any failure.
    void copy_in(const std::string& sql, std::string_view data);
    // ROLLBACK that never throws: used on error paths where the transaction may be dead.
    void rollback() noexcept;

private:
    explicit Connection(PGconn* c) noexcept : c_(c) {}
    PGconn* c_ = nullptr;
};

// "host:port/dbname" of a conninfo without connecting (for messages about a failed attempt).
std::string describe_conninfo(const std::string& conninfo);

// Quoted identifier for names we generate ourselves (partitions); quoted all the same.
std::string quote_ident(std::string_view identifier);

}  // namespace dnstap_collector::pg
