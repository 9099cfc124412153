// PostgreSQL binary COPY encoding of exchanges (dnstap.exchange) and of passive DNS
// aggregates (the pdns staging table). Pure functions over bytes: no libpq, no I/O, so the
// unit tests check the wire layout without a database.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dnstap_collector/pair.hpp"

namespace dnstap_collector::copy {

// 2000-01-01T00:00:00Z in unix microseconds: PostgreSQL's timestamp epoch.
inline constexpr std::int64_t pg_epoch_unix_us = 946'684'800'000'000;

// "PGCOPY\n\377\r\n\0", flags, header extension length.
std::string_view header() noexcept;
// Field count -1.
std::string_view trailer() noexcept;

// Appends rows' fields in PostgreSQL's binary send format to a string. Fields are stored
// through a pointer into room made ahead of them: a fixed-size field costs a bounds check
// and a few stores, not an append per part.
//
// A writer made with `ahead` makes room in large steps (the string zero-filled past what is
// written) and cuts the string to the bytes written only at flush() or when it is gone: the
// string must not be used, nor touched by anyone else, in between. Without `ahead` the string
// holds exactly the bytes written after every call.
class RowWriter {
public:
    explicit RowWriter(std::string& out, bool ahead = false) noexcept : out_(out), ahead_(ahead) {}
    ~RowWriter() { flush(); }
    RowWriter(const RowWriter&) = delete;
    RowWriter& operator=(const RowWriter&) = delete;

    // The fixed-size fields are inline: a few stores each.
    void begin_row(std::int16_t fields) {
        char* p = room(2);
        store_be(p, static_cast<std::uint16_t>(fields));
        wrote(p + 2);
    }
    void null() {
        char* p = room(4);
        store_be(p, std::uint32_t{0xffffffffu});
        wrote(p + 4);
    }
    void text(std::string_view utf8);             // caller guarantees valid UTF-8, no NUL
    void int4(std::int32_t v) {
        char* p = room(8);
        store_be(p, std::uint32_t{4});
        store_be(p + 4, static_cast<std::uint32_t>(v));
        wrote(p + 8);
    }
    void int8(std::int64_t v) {
        char* p = room(12);
        store_be(p, std::uint32_t{8});
        store_be(p + 4, static_cast<std::uint64_t>(v));
        wrote(p + 12);
    }
    void boolean(bool v) {
        char* p = room(5);
        store_be(p, std::uint32_t{1});
        p[4] = v ? 1 : 0;
        wrote(p + 5);
    }
    void timestamptz_unix_us(std::int64_t unix_us) { int8(unix_us - pg_epoch_unix_us); }
    void inet(const IpAddress& a);                // NULL when empty
    bool inet_text(std::string_view address);     // "192.0.2.1" / "2001:db8::1"; false (and
                                                  // nothing written) when not an address
    void jsonb(std::string_view json);            // json must be valid UTF-8 JSON
    // Text through sanitize_text, without a copy when it is printable ASCII already.
    void clean_text(std::string_view raw, bool escape_backslash);

    // Bytes written so far (the string's size once flushed).
    std::size_t size() const noexcept { return p_ ? static_cast<std::size_t>(p_ - out_.data()) : out_.size(); }
    // At least n writable bytes at the end of what is written; the caller stores into them
    // and says where it stopped with wrote(). Pointers into the output stay valid until the
    // next room().
    char* room(std::size_t n) {
        if (static_cast<std::size_t>(end_ - p_) < n) grow(n);
        return p_;
    }
    void wrote(char* end) noexcept {
        p_ = end;
        if (!ahead_) flush();
    }
    char* at(std::size_t offset) noexcept { return out_.data() + offset; }
    // Cuts the string to the bytes written.
    void flush() noexcept;

    // Big-endian (network order) stores, as the binary COPY format wants.
    template <class T>
    static void store_be(char* p, T v) noexcept {
        if constexpr (std::endian::native == std::endian::little) v = byteswap(v);
        std::memcpy(p, &v, sizeof v);
    }

private:
    static std::uint16_t byteswap(std::uint16_t v) noexcept { return __builtin_bswap16(v); }
    static std::uint32_t byteswap(std::uint32_t v) noexcept { return __builtin_bswap32(v); }
    static std::uint64_t byteswap(std::uint64_t v) noexcept { return __builtin_bswap64(v); }
    void grow(std::size_t n);
    std::string& out_;
    bool ahead_;
    char* p_ = nullptr;    // next byte to write; null when the string holds just what was written
    char* end_ = nullptr;  // end of the room
};

// Arbitrary bytes -> valid UTF-8 with no control characters: printable ASCII and valid
// multi-byte UTF-8 pass, every other byte becomes \DDD (as in DNS presentation format).
// With escape_backslash, '\' becomes "\\" so the result reads back unambiguously (raw bytes
// such as identity); names already in presentation format keep their escapes as they are.
std::string sanitize_text(std::string_view raw, bool escape_backslash);

// Every column of dnstap.exchange the collector writes, in COPY order. Defined once: the
// COPY statement and the row encoder both walk this table.
struct RowSource;
struct Column {
    std::string_view name;
    void (*encode)(const RowSource&, RowWriter&);
};
std::span<const Column> exchange_columns() noexcept;
std::string exchange_copy_statement();

// The time a row is filed under (unix microseconds): the query's time when there is a
// query, else the response's query_time, else its response_time.
std::int64_t exchange_time_us(const Exchange& e) noexcept;

// The name a record's data points at, stored like owner names (lowercase, no trailing dot):
// the whole rdata of CNAME, NS, PTR, DNAME; the exchange of MX, KX, RT; the host of AFSDB;
// the target of SRV; the replacement of NAPTR; the TargetName of SVCB/HTTPS. Empty for
// other types, for the root ("." : no target, e.g. a null MX) and for rdata in the generic
// "\# len hex" form.
std::string rdata_target_name(std::uint16_t type, std::string_view rdata_presentation);

// Passive DNS rows aggregated over one batch (or transaction), keyed like the upsert's
// conflict target (rrname, rrtype, rdata). An open-addressing hash table of entries whose
// strings live in one arena: clear() keeps all of it, so an aggregate that is reused
// allocates nothing once it has grown to its working size.
class PdnsAggregate {
public:
    // One entry, its strings viewing the aggregate (valid until it changes).
    struct View {
        std::string_view rrname, rrtype, rdata;
        std::int64_t first_us = 0, last_us = 0;  // unix microseconds
        std::uint64_t count = 0;
        std::string_view bailiwick, sensor_id;   // empty: NULL
        std::string_view rdata_name;             // see rdata_target_name; empty: NULL
    };
    // Answer-section records of the exchange's response, if any.
    void add(const Exchange& e);
    // Adds another aggregate, taken to be later (its bailiwick and sensor win), and leaves
    // it empty (its storage kept for reuse).
    void merge(PdnsAggregate&& later);
    bool empty() const noexcept { return entries_.empty(); }
    std::size_t size() const noexcept { return entries_.size(); }
    std::optional<View> find(std::string_view rrname, std::uint16_t rrtype, std::string_view rdata) const;
    void clear() noexcept;
    // Room for this many entries without growing.
    void reserve(std::size_t entries);
    // COPY rows (no header/trailer) in the staging table's column order, see
    // pdns_stage_columns; sorted by key.
    std::string encode() const;
    // The same, appended to `out` (its storage reused).
    void encode(std::string& out);

private:
    struct Str {
        std::uint32_t off = 0, len = 0;
    };
    struct Entry {
        std::uint64_t hash;
        std::int64_t first_us, last_us;
        std::uint64_t count;
        Str rrname, rdata;  // the key, with rrtype
        Str bailiwick, sensor_id, rdata_name;
        std::uint16_t rrtype;
    };
    std::string_view str(Str s) const noexcept { return {arena_.data() + s.off, s.len}; }
    Str put(std::string_view s);
    // `s` as a string of this aggregate: the one stored last for `last` when equal (one sensor
    // and zone sends most records), else a new copy.
    Str intern(std::string_view s, Str& last);
    // The slot holding this key, or the free slot where it would go (slots_ not empty).
    std::size_t probe(std::uint64_t hash, std::string_view rrname, std::uint16_t rrtype,
                      std::string_view rdata) const noexcept;
    // Index of the entry with this key, or of a new (zeroed) one; `fresh` says which.
    std::uint32_t slot_for(std::uint64_t hash, std::string_view rrname, std::uint16_t rrtype, std::string_view rdata,
                           bool& fresh);
    void grow(std::size_t at_least = 0);
    void sorted_order(std::vector<std::uint32_t>& order) const;
    void encode_rows(const std::vector<std::uint32_t>& order, std::string& out) const;
    View view(const Entry& e) const;

    std::vector<Entry> entries_;       // in insertion order
    std::vector<std::uint32_t> slots_;  // entry index + 1; 0: free (power-of-two size)
    std::string arena_;
    Str last_sensor_, last_bailiwick_;
    std::vector<std::uint32_t> order_;  // encode()'s scratch
};
inline constexpr std::string_view pdns_stage_columns =
    "rrname, rrtype, rdata, rdata_ip, time_first, time_last, count, bailiwick, sensor_id, rdata_name";
// Batches spooled by collectors before rdata_name (spool format 1) lack the last column.
inline constexpr std::string_view pdns_stage_columns_v1 =
    "rrname, rrtype, rdata, rdata_ip, time_first, time_last, count, bailiwick, sensor_id";

// One batch, encoded: what the writer sends, what the spool stores, and enough to split it
// by rows when the server rejects some.
struct EncodedBatch {
    std::string rows;                        // COPY rows, no header/trailer
    std::vector<std::uint32_t> row_end;      // end offset of each row in `rows`
    std::vector<std::uint8_t> messages;      // dnstap messages in each row (1 or 2)
    std::vector<std::int64_t> times_us;      // each row's time, for partitions
    std::string pdns_rows;                   // pdns staging COPY rows, no header/trailer
    std::uint32_t pdns_count = 0;
    std::uint8_t pdns_format = 2;            // 1: pdns_stage_columns_v1 (old spool files)
    // Not yet encoded pdns rows (encode_batch with pdns_as_map): the writer merges them over
    // a whole transaction; encode_pdns() turns them into pdns_rows.
    PdnsAggregate pdns_map;

    std::size_t size() const noexcept { return row_end.size(); }
    // Empty, keeping the storage of every part (batches are reused).
    void clear();
    std::uint64_t message_total() const noexcept;
    std::uint64_t message_total(std::size_t lo, std::size_t hi) const noexcept;
    // Full COPY payload (header + rows [lo, hi) + trailer).
    std::string copy_payload(std::size_t lo, std::size_t hi) const;
    std::string pdns_payload() const;
    // The rows whose flag is false, and the pdns part when keep_pdns.
    EncodedBatch subset(const std::vector<bool>& done, bool keep_pdns) const;
    // pdns_map -> pdns_rows (appended to what is there is not supported: pdns_rows must be
    // empty); leaves pdns_map empty.
    void encode_pdns();
    // The rows of several batches, in order, as one (pdns parts are left out).
    static EncodedBatch concat(std::span<const std::unique_ptr<EncodedBatch>> parts);
};

// Appends the rows (and, with_pdns, the pdns records to pdns_map) of `exchanges` to `out`:
// what the sink does, into batches it reuses.
void encode_into(EncodedBatch& out, std::span<const Exchange> exchanges, bool with_pdns);
// A new batch, through encode_into(), with the pdns records encoded (or, with pdns_as_map,
// left in pdns_map): for tests, the fuzz target and other one-off callers.
EncodedBatch encode_batch(std::span<const Exchange> exchanges, bool with_pdns);
EncodedBatch encode_batch(std::span<const std::vector<Exchange>> chunks, bool with_pdns,
                          std::span<const Exchange> more = {}, bool pdns_as_map = false);
void append_exchange(const Exchange& e, EncodedBatch& out);

}  // namespace dnstap_collector::copy
