// libFuzzer target: one dnstap frame (protobuf) through everything a worker does with it:
// decode_dnstap, route_hash, format_text, format_json, privacy, pairing, the exchange
// formatters of `tail`, and the PostgreSQL binary COPY encoder (exchange rows and pdns rows).
//
// The input is one data-frame payload (seeds: tests/fuzz/corpus/fuzz_dnstap_decode/, frames
// captured from a real named). Invariants beyond "no crash / ASan / UBSan report":
//   * decode_dnstap (hand-written wire reader) gives the status and format_json() of the decode
//     through the generated protobuf code it replaced (decode_reference.hpp), for every input;
//   * decode is deterministic and reset(): decoding into a used message gives the same result;
//   * route_hash is deterministic; every string of the message is printable ASCII;
//   * format_text is printable; format_json and format_exchange_json are well-formed JSON
//     (strict parser: balanced quotes and brackets, no raw control characters);
//   * the COPY rows parse back: 35 fields per row, each NULL or exactly its type's size,
//     text fields valid UTF-8 without NUL/control characters, inet well-formed, jsonb with
//     version 1 and well-formed JSON that PostgreSQL accepts; pdns rows likewise; the
//     payload has the PGCOPY header and trailer;
//   * the pairer emits every message it was given exactly once.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "decode_reference.hpp"
#include "dnstap_collector/decode.hpp"
#include "dnstap_collector/metrics.hpp"
#include "dnstap_collector/pair.hpp"
#include "dnstap_collector/pipeline.hpp"
#include "fuzz_common.hpp"
#include "sinks/copy_encoder.hpp"

using namespace dnstap_collector;
using fuzz::check_printable;
using fuzz::fail;

namespace {

void check_dns_strings(const DnsMessage& m) {
    check_printable(m.error, "dns error");
    check_printable(m.qname, "qname");
    if (m.qname.size() > 255 * 4) fail("qname longer than 255*4", m.qname);
    check_printable(m.ecs, "ecs");
    check_printable(m.ede_text, "ede_text");
    for (const auto& rr : m.answers) {
        check_printable(rr.name, "answer name");
        check_printable(rr.rdata, "answer rdata");
    }
}

void check_strings(const DnstapMessage& m) {
    check_printable(m.identity, "identity");
    check_printable(m.version, "version");
    check_printable(m.extra, "extra");
    check_printable(m.query_zone, "query_zone");
    check_printable(m.policy.type, "policy.type");
    check_printable(m.policy.rule, "policy.rule");
    check_printable(m.policy.action, "policy.action");
    check_printable(m.policy.match, "policy.match");
    check_printable(m.policy.value, "policy.value");
    if (m.query_address.length != 0 && m.query_address.length != 4 && m.query_address.length != 16)
        fail("query_address length");
    if (m.response_address.length != 0 && m.response_address.length != 4 && m.response_address.length != 16)
        fail("response_address length");
    check_printable(m.query_address.to_string(), "query_address");
    if (m.query) check_dns_strings(*m.query);
    if (m.response) check_dns_strings(*m.response);
}

// ---- binary COPY reader -------------------------------------------------------------------

struct CopyReader {
    std::string_view b;
    std::size_t i = 0;
    std::uint32_t u32() {
        if (b.size() - i < 4) fail("COPY: truncated int32");
        const auto* p = reinterpret_cast<const unsigned char*>(b.data() + i);
        i += 4;
        return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
    }
    std::uint16_t u16() {
        if (b.size() - i < 2) fail("COPY: truncated int16");
        const auto* p = reinterpret_cast<const unsigned char*>(b.data() + i);
        i += 2;
        return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
    }
    // One field: false for NULL, else its bytes.
    bool field(std::string_view& out) {
        const std::uint32_t len = u32();
        if (len == 0xffffffffu) return false;
        if (len > b.size() - i) fail("COPY: field runs past the row");
        out = b.substr(i, len);
        i += len;
        return true;
    }
};

enum class Kind { timestamptz, int4, int8, boolean, text, inet, jsonb };

Kind kind_of_column(std::string_view name) {
    static constexpr std::pair<std::string_view, Kind> table[] = {
        {"time", Kind::timestamptz}, {"response_time", Kind::timestamptz},
        {"query_port", Kind::int4}, {"response_port", Kind::int4}, {"dns_id", Kind::int4},
        {"query_size", Kind::int4}, {"response_size", Kind::int4}, {"answer_count", Kind::int4},
        {"authority_count", Kind::int4}, {"additional_count", Kind::int4}, {"edns_udp_size", Kind::int4},
        {"ede_code", Kind::int4}, {"latency_us", Kind::int8}, {"has_query", Kind::boolean},
        {"has_response", Kind::boolean}, {"edns_do", Kind::boolean}, {"query_address", Kind::inet},
        {"response_address", Kind::inet}, {"answers", Kind::jsonb}, {"policy", Kind::jsonb},
    };
    for (const auto& [n, k] : table)
        if (n == name) return k;
    return Kind::text;
}

void check_value(Kind k, std::string_view v, std::string_view column) {
    std::string what = "COPY column ";
    what += column;
    switch (k) {
    case Kind::timestamptz:
    case Kind::int8:
        if (v.size() != 8) fail((what + ": not 8 bytes").c_str(), v);
        break;
    case Kind::int4:
        if (v.size() != 4) fail((what + ": not 4 bytes").c_str(), v);
        break;
    case Kind::boolean:
        if (v.size() != 1 || (v[0] != 0 && v[0] != 1)) fail((what + ": bad boolean").c_str(), v);
        break;
    case Kind::text:
        if (!fuzz::valid_text(v)) fail((what + ": not valid UTF-8 text").c_str(), v);
        break;
    case Kind::inet: {
        if (v.size() != 8 && v.size() != 20) fail((what + ": bad inet size").c_str(), v);
        const bool v4 = v.size() == 8;
        if (v[0] != (v4 ? 2 : 3) || static_cast<unsigned char>(v[1]) != (v4 ? 32 : 128) || v[2] != 0 ||
            v[3] != (v4 ? 4 : 16))
            fail((what + ": bad inet header").c_str(), v);
        break;
    }
    case Kind::jsonb:
        if (v.empty() || v[0] != 1) fail((what + ": jsonb version").c_str(), v);
        fuzz::check_jsonb(v.substr(1), what.c_str());
        break;
    }
}

void check_exchange_rows(const copy::EncodedBatch& batch, std::size_t expected_rows) {
    if (batch.size() != expected_rows || batch.messages.size() != expected_rows ||
        batch.times_us.size() != expected_rows)
        fail("COPY: row bookkeeping");
    const auto columns = copy::exchange_columns();
    CopyReader r{batch.rows};
    for (std::size_t row = 0; row < batch.size(); ++row) {
        if (r.u16() != columns.size()) fail("COPY: field count");
        for (const auto& c : columns) {
            std::string_view v;
            if (r.field(v)) check_value(kind_of_column(c.name), v, c.name);
        }
        if (r.i != batch.row_end[row]) fail("COPY: row_end does not match the row");
        if (batch.messages[row] < 1 || batch.messages[row] > 2) fail("COPY: messages per row");
    }
    if (r.i != batch.rows.size()) fail("COPY: bytes after the last row");

    const std::string payload = batch.copy_payload(0, batch.size());
    if (payload.size() != copy::header().size() + batch.rows.size() + copy::trailer().size() ||
        payload.compare(0, copy::header().size(), copy::header()) != 0 ||
        payload.compare(payload.size() - 2, 2, copy::trailer()) != 0)
        fail("COPY: payload framing");
}

void check_pdns_rows(const copy::EncodedBatch& batch) {
    CopyReader r{batch.pdns_rows};
    static constexpr Kind kinds[] = {Kind::text, Kind::text, Kind::text, Kind::inet, Kind::timestamptz,
                                     Kind::timestamptz, Kind::int8, Kind::text, Kind::text, Kind::text};
    static constexpr std::string_view names[] = {"rrname", "rrtype", "rdata", "rdata_ip", "time_first",
                                                 "time_last", "count", "bailiwick", "sensor_id", "rdata_name"};
    constexpr std::uint16_t fields = std::size(names);
    std::uint32_t rows = 0;
    while (r.i < batch.pdns_rows.size()) {
        if (r.u16() != fields) fail("pdns COPY: field count");
        for (std::size_t k = 0; k < fields; ++k) {
            std::string_view v;
            const bool present = r.field(v);
            if (!present && k != 3 && k < 7) fail("pdns COPY: NULL in a NOT NULL column");
            if (present) check_value(kinds[k], v, names[k]);
        }
        ++rows;
    }
    if (rows != batch.pdns_count) fail("pdns COPY: row count");
}

void check_copy(const std::vector<Exchange>& exchanges) {
    const copy::EncodedBatch batch = copy::encode_batch(exchanges, /*with_pdns=*/true);
    check_exchange_rows(batch, exchanges.size());
    check_pdns_rows(batch);
    // Splitting by rows (the writer's retry path) keeps rows intact.
    std::vector<bool> done(batch.size(), false);
    if (!done.empty()) done[0] = true;
    const copy::EncodedBatch rest = batch.subset(done, false);
    check_exchange_rows(rest, batch.size() - (done.empty() ? 0 : 1));
}

void check_exchange_formats(const Exchange& e) {
    check_printable(format_exchange_text(e), "format_exchange_text");
    fuzz::check_json(format_exchange_json(e), "format_exchange_json");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size > (1u << 20)) return 0;
    const std::span<const std::uint8_t> frame(data, size);

    const std::uint64_t h = route_hash(frame);
    if (route_hash(frame) != h) fail("route_hash is not deterministic");

    DnstapMessage m;
    const DecodeStatus status = decode_dnstap(frame, m);
    if (m.frame_size != size) fail("frame_size");
    {
        DnstapMessage r;
        const DecodeStatus reference_status = reference::decode_dnstap_reference(frame, r);
        if (reference_status != status) fail("decode_dnstap status differs from the protobuf decode");
        const std::string json = format_json(m);
        if (format_json(r) != json) fail("decode_dnstap differs from the protobuf decode", json);
    }
    if (status == DecodeStatus::bad_protobuf || status == DecodeStatus::not_message) return 0;

    check_strings(m);
    const std::string json = format_json(m);
    fuzz::check_json(json, "format_json");
    check_printable(format_text(m), "format_text");

    // Decoding again into the used message gives the same message.
    {
        DnstapMessage again = m;
        again.identity = "stale";
        again.query.emplace().qname = "stale";
        again.policy.present = true;
        if (decode_dnstap(frame, again) != status || format_json(again) != json)
            fail("decode_dnstap into a used message differs", json);
    }

    // The message alone, and paired with itself (both sides present), to the COPY encoder.
    std::vector<Exchange> exchanges;
    {
        Exchange alone;
        if (is_query(m.type)) alone.query = std::make_unique<DnstapMessage>(m);
        else alone.response = std::make_unique<DnstapMessage>(m);
        exchanges.push_back(std::move(alone));
        Exchange both;
        both.query = std::make_unique<DnstapMessage>(m);
        both.response = std::make_unique<DnstapMessage>(m);
        exchanges.push_back(std::move(both));
        Exchange response_only;
        response_only.response = std::make_unique<DnstapMessage>(m);
        exchanges.push_back(std::move(response_only));
    }
    for (const auto& e : exchanges) check_exchange_formats(e);
    check_copy(exchanges);

    // Privacy on a copy: prefixes, keyed hash, name exclusion.
    {
        PrivacyOptions po;
        po.client_prefix_v4 = 24;
        po.client_prefix_v6 = 56;
        po.hash_key = "fuzz";
        po.exclude_names = {"example.com.", "."};
        if (size & 1) po.exclude_names.pop_back();
        Privacy privacy(po);
        Exchange p;
        (is_query(m.type) ? p.query : p.response) = std::make_unique<DnstapMessage>(m);
        if (privacy.apply(p)) {
            check_strings(p.any());
            fuzz::check_json(format_json(p.any()), "format_json after privacy");
            fuzz::check_json(format_exchange_json(p), "format_exchange_json after privacy");
        }
    }

    // Pairing: the message twice (a duplicate) and a response-typed copy; every one comes out
    // exactly once.
    {
        Metrics metrics;
        std::uint32_t emitted = 0;
        Pairer pairer(PairOptions{}, metrics, [&](Exchange&& e) {
            emitted += e.message_count();
            check_exchange_formats(e);
        });
        const auto now = Pairer::Clock::now();
        pairer.add(DnstapMessage(m), now);
        pairer.add(DnstapMessage(m), now);
        DnstapMessage other = m;
        other.type = is_query(m.type) ? static_cast<MessageType>(static_cast<int>(m.type) + 1) : m.type;
        pairer.add(std::move(other), now);
        pairer.expire(now + std::chrono::hours(1));
        pairer.flush_all();
        if (emitted != 3 || pairer.pending() != 0) fail("pairer lost or duplicated a message");
    }
    return 0;
}
