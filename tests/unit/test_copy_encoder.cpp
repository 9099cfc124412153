// Binary COPY layout of dnstap.exchange rows and pdns aggregates; no database needed.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <tuple>
#include <string>
#include <vector>

#include "sinks/copy_encoder.hpp"
#include "sinks/partitions.hpp"
#include "sinks/spool.hpp"

using namespace dnstap_collector;
using namespace dnstap_collector::copy;

namespace {

std::string bytes(std::initializer_list<int> b) {
    std::string s;
    for (int v : b) s.push_back(static_cast<char>(v));
    return s;
}

IpAddress ip4(int a, int b, int c, int d) {
    IpAddress ip;
    ip.length = 4;
    ip.bytes[0] = static_cast<std::uint8_t>(a);
    ip.bytes[1] = static_cast<std::uint8_t>(b);
    ip.bytes[2] = static_cast<std::uint8_t>(c);
    ip.bytes[3] = static_cast<std::uint8_t>(d);
    return ip;
}

// One parsed binary COPY row: field values, std::nullopt for NULL.
using Row = std::vector<std::optional<std::string>>;

std::uint32_t be32(const std::string& s, std::size_t pos) {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(s[pos + static_cast<std::size_t>(i)]);
    return v;
}
std::int64_t be64(const std::string& s) {
    std::uint64_t v = 0;
    for (char c : s) v = (v << 8) | static_cast<unsigned char>(c);
    return static_cast<std::int64_t>(v);
}

std::vector<Row> parse_rows(const std::string& data) {
    std::vector<Row> rows;
    std::size_t pos = 0;
    while (pos < data.size()) {
        int n = (static_cast<unsigned char>(data[pos]) << 8) | static_cast<unsigned char>(data[pos + 1]);
        pos += 2;
        Row row;
        for (int f = 0; f < n; ++f) {
            std::uint32_t len = be32(data, pos);
            pos += 4;
            if (len == 0xffffffffu) {
                row.push_back(std::nullopt);
            } else {
                row.push_back(data.substr(pos, len));
                pos += len;
            }
        }
        rows.push_back(std::move(row));
    }
    return rows;
}

std::size_t column(std::string_view name) {
    auto cols = exchange_columns();
    for (std::size_t i = 0; i < cols.size(); ++i)
        if (cols[i].name == name) return i;
    FAIL("no column " << name);
    return 0;
}

constexpr std::int64_t t0_ns = 1'700'000'000'123'456'789;  // 2023-11-14T22:13:20.123456789Z

DnstapMessage query_message() {
    DnstapMessage m;
    m.identity = "ns1";
    m.type = MessageType::client_query;
    m.family = SocketFamily::inet;
    m.protocol = SocketProtocol::udp;
    m.query_address = ip4(192, 0, 2, 10);
    m.response_address = ip4(192, 0, 2, 53);
    m.query_port = 40000;
    m.has_query_port = true;
    m.response_port = 53;
    m.has_response_port = true;
    m.query_time_ns = t0_ns;
    DnsMessage q;
    q.size = 40;
    q.id = 0x1234;
    q.flags = 0x0100;  // rd
    q.has_question = true;
    q.qname = "WWW.Example.COM";
    q.qtype = 1;
    q.qclass = 1;
    m.query = q;
    return m;
}

DnstapMessage response_message() {
    DnstapMessage m = query_message();
    m.type = MessageType::client_response;
    m.query.reset();
    m.response_time_ns = t0_ns + 1'500'000;  // 1.5 ms later
    DnsMessage r;
    r.size = 56;
    r.id = 0x1234;
    r.flags = 0x8180;  // qr rd ra
    r.has_question = true;
    r.qname = "WWW.Example.COM";
    r.qtype = 1;
    r.qclass = 1;
    r.ancount = 1;
    r.answers.push_back(ResourceRecord{"www.example.com", 1, 1, 300, "192.0.2.80"});
    m.response = r;
    return m;
}

}  // namespace

TEST_CASE("COPY header and trailer", "[copy]") {
    CHECK(header() == bytes({'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0, 0, 0, 0, 0, 0, 0, 0, 0}));
    CHECK(trailer() == bytes({0xff, 0xff}));
}

TEST_CASE("field encodings", "[copy]") {
    std::string out;
    RowWriter w(out);
    SECTION("row header and NULL") {
        w.begin_row(3);
        w.null();
        CHECK(out == bytes({0, 3, 0xff, 0xff, 0xff, 0xff}));
    }
    SECTION("int4, int8, bool") {
        w.int4(-2);
        w.int8(0x0102030405060708);
        w.boolean(true);
        w.boolean(false);
        CHECK(out == bytes({0, 0, 0, 4, 0xff, 0xff, 0xff, 0xfe,
                            0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8,
                            0, 0, 0, 1, 1,
                            0, 0, 0, 1, 0}));
    }
    SECTION("text is length + bytes") {
        w.text("ab");
        w.text("");
        CHECK(out == bytes({0, 0, 0, 2, 'a', 'b', 0, 0, 0, 0}));
    }
    SECTION("timestamptz counts microseconds from 2000-01-01 UTC") {
        w.timestamptz_unix_us(pg_epoch_unix_us);
        w.timestamptz_unix_us(pg_epoch_unix_us + 1'000'000);
        w.timestamptz_unix_us(0);  // 1970: negative
        CHECK(out.substr(0, 12) == bytes({0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0}));
        CHECK(out.substr(12, 12) == bytes({0, 0, 0, 8, 0, 0, 0, 0, 0, 0x0f, 0x42, 0x40}));
        CHECK(be64(out.substr(28, 8)) == -946'684'800'000'000);
    }
    SECTION("inet v4 uses PostgreSQL's family 2") {
        w.inet(ip4(192, 0, 2, 1));
        CHECK(out == bytes({0, 0, 0, 8, 2, 32, 0, 4, 192, 0, 2, 1}));
    }
    SECTION("inet v6 uses PostgreSQL's family 3") {
        IpAddress a;
        a.length = 16;
        a.bytes = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        w.inet(a);
        CHECK(out == bytes({0, 0, 0, 20, 3, 128, 0, 16, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
    }
    SECTION("empty inet is NULL") {
        w.inet(IpAddress{});
        CHECK(out == bytes({0xff, 0xff, 0xff, 0xff}));
    }
    SECTION("inet from text") {
        CHECK(w.inet_text("10.1.2.3"));
        CHECK(out == bytes({0, 0, 0, 8, 2, 32, 0, 4, 10, 1, 2, 3}));
        out.clear();
        CHECK(w.inet_text("::1"));
        CHECK(out.size() == 24);
        out.clear();
        CHECK_FALSE(w.inet_text("example.com"));
        CHECK_FALSE(w.inet_text(std::string(100, '1')));
        CHECK(out.empty());
    }
    SECTION("jsonb is version 1 + text") {
        w.jsonb("[]");
        CHECK(out == bytes({0, 0, 0, 3, 1, '[', ']'}));
    }
}

TEST_CASE("text is made valid UTF-8", "[copy]") {
    CHECK(sanitize_text("plain.example", false) == "plain.example");
    CHECK(sanitize_text(std::string("a\0b", 3), true) == "a\\000b");
    CHECK(sanitize_text("tab\there", true) == "tab\\009here");
    CHECK(sanitize_text("\xff\xfe", true) == "\\255\\254");
    CHECK(sanitize_text("caf\xc3\xa9", true) == "caf\xc3\xa9");        // valid UTF-8 kept
    CHECK(sanitize_text("\xc0\xaf", true) == "\\192\\175");            // overlong
    CHECK(sanitize_text("\xed\xa0\x80", true) == "\\237\\160\\128");   // surrogate
    CHECK(sanitize_text("\xc2\x85", true) == "\\194\\133");            // C1 control
    CHECK(sanitize_text("\xe2\x82", true) == "\\226\\130");            // truncated
    CHECK(sanitize_text("a\\b", true) == "a\\\\b");
    CHECK(sanitize_text("a\\.b", false) == "a\\.b");                   // presentation kept

    std::string j;
    append_json_string(j, "q\"\\\x01");
    CHECK(j == "\"q\\\"\\\\\\u0001\"");
}

TEST_CASE("column table drives the COPY statement", "[copy]") {
    std::string sql = exchange_copy_statement();
    CHECK(sql.starts_with("COPY dnstap.exchange (time, response_time, identity, kind, "));
    CHECK(sql.ends_with(", policy, error) FROM STDIN (FORMAT binary)"));
    CHECK(exchange_columns().size() == 35);
}

TEST_CASE("a paired exchange becomes one row", "[copy]") {
    Exchange e;
    e.query = std::make_unique<DnstapMessage>(query_message());
    e.response = std::make_unique<DnstapMessage>(response_message());
    e.query->identity = std::string("ns\0\xff", 4);
    e.response->query_zone = "Example.COM.";

    EncodedBatch b = encode_batch(std::span<const Exchange>(&e, 1), true);
    REQUIRE(b.size() == 1);
    CHECK(b.messages[0] == 2);
    CHECK(b.message_total() == 2);
    CHECK(b.times_us[0] == t0_ns / 1000);

    auto rows = parse_rows(b.rows);
    REQUIRE(rows.size() == 1);
    const Row& r = rows[0];
    REQUIRE(r.size() == exchange_columns().size());
    CHECK(be64(*r[column("time")]) == t0_ns / 1000 - pg_epoch_unix_us);
    CHECK(be64(*r[column("response_time")]) == (t0_ns + 1'500'000) / 1000 - pg_epoch_unix_us);
    CHECK(*r[column("identity")] == "ns\\000\\255");
    CHECK(*r[column("kind")] == "client");
    CHECK(*r[column("query_type")] == "CQ");
    CHECK(*r[column("response_type")] == "CR");
    CHECK(*r[column("transport")] == "udp");
    CHECK(*r[column("query_address")] == bytes({2, 32, 0, 4, 192, 0, 2, 10}));
    CHECK(be32(*r[column("query_port")], 0) == 40000);
    CHECK(be32(*r[column("dns_id")], 0) == 0x1234);
    CHECK(*r[column("qname")] == "www.example.com");
    CHECK(*r[column("qtype")] == "A");
    CHECK(*r[column("qclass")] == "IN");
    CHECK(*r[column("opcode")] == "QUERY");
    CHECK(*r[column("rcode")] == "NOERROR");
    CHECK(*r[column("flags")] == "qr rd ra");
    CHECK(*r[column("has_query")] == bytes({1}));
    CHECK(*r[column("has_response")] == bytes({1}));
    CHECK(be64(*r[column("latency_us")]) == 1500);
    CHECK(be32(*r[column("query_size")], 0) == 40);
    CHECK(be32(*r[column("response_size")], 0) == 56);
    CHECK(be32(*r[column("answer_count")], 0) == 1);
    CHECK(*r[column("answers")] ==
          std::string("\x01") + R"([{"name":"www.example.com","type":"A","ttl":300,"rdata":"192.0.2.80"}])");
    CHECK_FALSE(r[column("edns_udp_size")]);
    CHECK_FALSE(r[column("ecs")]);
    CHECK_FALSE(r[column("ede_code")]);
    CHECK(*r[column("query_zone")] == "example.com");
    CHECK_FALSE(r[column("policy")]);
    CHECK_FALSE(r[column("error")]);
}

TEST_CASE("a lone query has NULL response columns", "[copy]") {
    Exchange e;
    e.query = std::make_unique<DnstapMessage>(query_message());
    e.query->query->error = "truncated";
    EncodedBatch b;
    append_exchange(e, b);
    auto r = parse_rows(b.rows).at(0);
    CHECK(*r[column("has_response")] == bytes({0}));
    CHECK_FALSE(r[column("response_time")]);
    CHECK_FALSE(r[column("response_type")]);
    CHECK_FALSE(r[column("rcode")]);
    CHECK_FALSE(r[column("latency_us")]);
    CHECK_FALSE(r[column("answers")]);
    CHECK(*r[column("flags")] == "rd");
    CHECK(*r[column("error")] == "truncated");
    CHECK(b.messages[0] == 1);
}

TEST_CASE("a lone response is filed under its query time", "[copy]") {
    Exchange e;
    e.response = std::make_unique<DnstapMessage>(response_message());
    e.response->query_time_ns = t0_ns - 2'000'000;
    CHECK(exchange_time_us(e) == (t0_ns - 2'000'000) / 1000);
    e.response->query_time_ns = -1;
    CHECK(exchange_time_us(e) == (t0_ns + 1'500'000) / 1000);

    EncodedBatch b;
    append_exchange(e, b);
    auto r = parse_rows(b.rows).at(0);
    CHECK(*r[column("has_query")] == bytes({0}));
    CHECK_FALSE(r[column("query_size")]);
    CHECK(*r[column("qname")] == "www.example.com");  // from the response's question
    CHECK_FALSE(r[column("latency_us")]);
}

TEST_CASE("EDNS, ECS, EDE and policy", "[copy]") {
    Exchange e;
    e.query = std::make_unique<DnstapMessage>(query_message());
    e.response = std::make_unique<DnstapMessage>(response_message());
    e.query->query->has_edns = true;
    e.query->query->edns_udp_size = 1232;
    e.query->query->edns_do = true;
    e.query->query->ecs = "198.51.100.0/24";
    e.response->response->rcode = 2;
    e.response->response->ede_code = 22;
    e.response->response->ede_text = "no \"reachable\" authority";
    e.response->policy.present = true;
    e.response->policy.type = "QNAME";
    e.response->policy.action = "NXDOMAIN";
    EncodedBatch b;
    append_exchange(e, b);
    auto r = parse_rows(b.rows).at(0);
    CHECK(be32(*r[column("edns_udp_size")], 0) == 1232);
    CHECK(*r[column("edns_do")] == bytes({1}));
    CHECK(*r[column("ecs")] == "198.51.100.0/24");
    CHECK(*r[column("rcode")] == "SERVFAIL");
    CHECK(be32(*r[column("ede_code")], 0) == 22);
    CHECK(*r[column("ede_text")] == "no \"reachable\" authority");
    CHECK(*r[column("policy")] == std::string("\x01") + R"({"type":"QNAME","action":"NXDOMAIN"})");
}

TEST_CASE("pdns aggregation", "[copy][pdns]") {
    PdnsAggregate agg;
    Exchange e;
    e.response = std::make_unique<DnstapMessage>(response_message());
    e.response->identity = "sensor-1";
    e.response->query_zone = "example.com";
    auto& answers = e.response->response->answers;
    answers.push_back(ResourceRecord{"alias.example.com", 5, 1, 60, "WWW.Example.COM."});
    answers.push_back(ResourceRecord{"www.example.com", 16, 3, 60, "\"chaos\""});  // CH: skipped
    agg.add(e);
    e.response->response_time_ns += 5'000'000'000;
    agg.add(e);
    e.response->response_time_ns -= 9'000'000'000;
    agg.add(e);
    Exchange lone_query;
    lone_query.query = std::make_unique<DnstapMessage>(query_message());
    agg.add(lone_query);  // no response: nothing

    REQUIRE(agg.size() == 2);
    auto it = agg.find("www.example.com", 1 /* A */, "192.0.2.80");
    REQUIRE(it);
    CHECK(it->count == 3);
    CHECK(it->first_us == (t0_ns + 1'500'000 - 4'000'000'000) / 1000);
    CHECK(it->last_us == (t0_ns + 1'500'000 + 5'000'000'000) / 1000);
    CHECK(it->bailiwick == "example.com");
    CHECK(it->sensor_id == "sensor-1");
    // Lone-name rdata is normalized like owner names.
    CHECK(agg.find("alias.example.com", 5 /* CNAME */, "www.example.com"));

    auto rows = parse_rows(agg.encode());
    REQUIRE(rows.size() == 2);
    // Sorted by key: alias... first. CNAME has no rdata_ip; A has one.
    CHECK(*rows[0][0] == "alias.example.com");
    CHECK_FALSE(rows[0][3]);
    CHECK(*rows[1][3] == bytes({2, 32, 0, 4, 192, 0, 2, 80}));
    CHECK(be64(*rows[1][6]) == 3);
}

TEST_CASE("rdata target names", "[copy][pdns]") {
    CHECK(rdata_target_name(15, "10 Mail.Example.COM.") == "mail.example.com");      // MX
    CHECK(rdata_target_name(15, "0 .").empty());                                      // null MX
    CHECK(rdata_target_name(33, "0 5 5060 SIP.example.com.") == "sip.example.com");   // SRV
    CHECK(rdata_target_name(33, "0 0 0 .").empty());
    CHECK(rdata_target_name(5, "host4.example.com") == "host4.example.com");          // CNAME
    CHECK(rdata_target_name(2, "NS1.example.com.") == "ns1.example.com");             // NS
    CHECK(rdata_target_name(12, "a\\032b.example.") == "a\\032b.example");            // PTR, escapes kept
    CHECK(rdata_target_name(39, "example.net.") == "example.net");                    // DNAME
    // NAPTR: quoted fields may hold spaces.
    CHECK(rdata_target_name(35, "100 10 \"S\" \"SIP+D2U\" \"!^.* x$!sip:a@b!\" _sip._udp.Example.com.") ==
          "_sip._udp.example.com");
    CHECK(rdata_target_name(35, "100 10 \"U\" \"E2U+sip\" \"!^.*$!sip:a@b!\" .").empty());
    CHECK(rdata_target_name(64, "1 svc.example.net. alpn=h2") == "svc.example.net");  // SVCB
    CHECK(rdata_target_name(65, "1 . alpn=h2,h3").empty());                          // HTTPS, owner
    CHECK(rdata_target_name(36, "10 kx.example.") == "kx.example");                   // KX
    CHECK(rdata_target_name(18, "1 afsdb.example.") == "afsdb.example");              // AFSDB
    CHECK(rdata_target_name(21, "10 relay.example.") == "relay.example");             // RT
    CHECK(rdata_target_name(1, "192.0.2.1").empty());                                 // A
    CHECK(rdata_target_name(16, "\"mail.example.com\"").empty());                     // TXT
    CHECK(rdata_target_name(15, "\\# 4 000a0000").empty());                            // generic form
    CHECK(rdata_target_name(15, "10").empty());                                       // truncated

    PdnsAggregate agg;
    Exchange e;
    e.response = std::make_unique<DnstapMessage>(response_message());
    e.response->response->answers.clear();
    e.response->response->answers.push_back(ResourceRecord{"example.com", 15, 1, 60, "10 Mail.example.com."});
    agg.add(e);
    auto rows = parse_rows(agg.encode());
    REQUIRE(rows.size() == 1);
    REQUIRE(rows[0].size() == 10);
    CHECK(*rows[0][2] == "10 Mail.example.com.");  // rdata as presented
    CHECK(*rows[0][9] == "mail.example.com");      // rdata_name
}

TEST_CASE("spool format 1 files still parse", "[copy][spool]") {
    std::vector<Exchange> ex(2);
    for (auto& e : ex) e.query = std::make_unique<DnstapMessage>(query_message());
    ex[1].response = std::make_unique<DnstapMessage>(response_message());
    EncodedBatch b = encode_batch(ex, true);
    b.pdns_format = 1;  // what an older collector wrote (9-column pdns rows)
    std::string file = Spool::serialize(b);
    CHECK(file.starts_with("DNSTAPSPOOL1\n"));
    auto back = Spool::parse(file);
    REQUIRE(back);
    CHECK(back->pdns_format == 1);
    CHECK(back->message_total() == 3);
    b.pdns_format = 2;
    file = Spool::serialize(b);
    CHECK(file.starts_with("DNSTAPSPOOL2\n"));
    back = Spool::parse(file);
    REQUIRE(back);
    CHECK(back->pdns_format == 2);
    CHECK(back->message_total() == 3);
}

TEST_CASE("batches split by rows and survive the spool format", "[copy][spool]") {
    std::vector<Exchange> ex(3);
    for (auto& e : ex) e.query = std::make_unique<DnstapMessage>(query_message());
    ex[1].response = std::make_unique<DnstapMessage>(response_message());
    EncodedBatch b = encode_batch(ex, true);
    REQUIRE(b.size() == 3);
    CHECK(b.message_total() == 4);
    CHECK(b.pdns_count == 1);

    std::string one = b.copy_payload(1, 2);
    CHECK(one.starts_with(header()));
    CHECK(one.ends_with(trailer()));
    CHECK(parse_rows(one.substr(header().size(), one.size() - header().size() - trailer().size())).size() == 1);

    EncodedBatch rest = b.subset({true, false, true}, false);
    CHECK(rest.size() == 1);
    CHECK(rest.messages[0] == 2);
    CHECK(rest.pdns_count == 0);

    std::string file = Spool::serialize(b);
    auto back = Spool::parse(file);
    REQUIRE(back);
    CHECK(back->rows == b.rows);
    CHECK(back->row_end == b.row_end);
    CHECK(back->messages == b.messages);
    CHECK(back->times_us == b.times_us);
    CHECK(back->pdns_rows == b.pdns_rows);
    CHECK(back->pdns_count == 1);
    CHECK_FALSE(Spool::parse(file.substr(0, file.size() - 1)));  // torn write
}

TEST_CASE("partition periods and names", "[partitions]") {
    std::int64_t t = 1'700'000'000;  // 2023-11-14 22:13:20 UTC
    CHECK(period_start(t, PartitionWidth::day) == 1'699'920'000);
    CHECK(period_start(t, PartitionWidth::hour) == 1'699'999'200);
    CHECK(partition_name(period_start(t, PartitionWidth::day), PartitionWidth::day) == "exchange_p20231114");
    CHECK(partition_name(period_start(t, PartitionWidth::hour), PartitionWidth::hour) == "exchange_p2023111422");
    CHECK(utc_literal(1'699'999'200) == "2023-11-14 22:00:00+00");
    CHECK(period_start(-1, PartitionWidth::day) == -86400);
    auto day = parse_partition_name("exchange_p20231114");
    REQUIRE(day);
    CHECK(day->first == 1'699'920'000);
    CHECK(day->second == 1'699'920'000 + 86400);
    auto hour = parse_partition_name("exchange_p2023111422");
    REQUIRE(hour);
    CHECK(hour->second - hour->first == 3600);
    CHECK_FALSE(parse_partition_name("exchange_p20231341"));
    CHECK_FALSE(parse_partition_name("exchange_default"));
}

TEST_CASE("pdns aggregates merge over a transaction like one aggregate", "[copy][pdns]") {
    Exchange e;
    e.response = std::make_unique<DnstapMessage>(response_message());
    e.response->identity = "sensor-1";
    e.response->response->answers.push_back(ResourceRecord{"alias.example.com", 5, 1, 60, "www.example.com."});
    Exchange later = e.clone();
    later.response->response_time_ns += 7'000'000'000;
    later.response->identity = "sensor-2";
    later.response->response->answers.push_back(ResourceRecord{"www.example.com", 28, 1, 60, "2001:db8::1"});

    PdnsAggregate one, first, second;
    for (const Exchange* x : {&e, &e, &later}) one.add(*x);
    first.add(e);
    first.add(e);
    second.add(later);
    PdnsAggregate merged;
    merged.merge(std::move(first));  // into an empty one: taken whole
    merged.merge(std::move(second));
    CHECK(first.empty());
    CHECK(second.empty());
    REQUIRE(merged.size() == 3);
    CHECK(merged.encode() == one.encode());
    auto it = merged.find("www.example.com", 1 /* A */, "192.0.2.80");
    REQUIRE(it);
    CHECK(it->count == 3);
    CHECK(it->sensor_id == "sensor-2");  // the later one
    CHECK(it->last_us == (t0_ns + 1'500'000 + 7'000'000'000) / 1000);

    // encode_batch can leave the aggregate unencoded for the writer to merge.
    std::vector<std::vector<Exchange>> chunks(1);
    chunks[0].push_back(e.clone());
    chunks[0].push_back(later.clone());
    EncodedBatch b = encode_batch(chunks, true, {}, true);
    CHECK(b.pdns_count == 0);
    CHECK(b.pdns_rows.empty());
    CHECK(b.pdns_map.size() == 3);
    b.encode_pdns();
    CHECK(b.pdns_count == 3);
    CHECK(b.pdns_map.empty());
    CHECK(b.pdns_rows == encode_batch(chunks, true).pdns_rows);
}

TEST_CASE("encoded batches concatenate by rows", "[copy]") {
    std::vector<Exchange> a(2), c(1);
    for (auto& e : a) e.query = std::make_unique<DnstapMessage>(query_message());
    a[1].response = std::make_unique<DnstapMessage>(response_message());
    c[0].response = std::make_unique<DnstapMessage>(response_message());
    EncodedBatch x = encode_batch(a, false), y = encode_batch(c, false);
    std::vector<std::unique_ptr<EncodedBatch>> parts;
    parts.push_back(std::make_unique<EncodedBatch>(x));
    parts.push_back(std::make_unique<EncodedBatch>(y));
    EncodedBatch all = EncodedBatch::concat(parts);
    REQUIRE(all.size() == 3);
    CHECK(all.rows == x.rows + y.rows);
    CHECK(all.message_total() == x.message_total() + y.message_total());
    CHECK(all.copy_payload(2, 3) == y.copy_payload(0, 1));
    CHECK(all.copy_payload(0, 2) == x.copy_payload(0, 2));
    CHECK(all.times_us[2] == y.times_us[0]);
}

namespace {

// Reference model of the pdns aggregate: a std::map over the key as text, the rules spelled
// out once more (ASCII inputs only: lowercase, no trailing dot).
struct RefValue {
    std::int64_t first_us = 0, last_us = 0;
    std::uint64_t count = 0;
    std::string bailiwick, sensor_id, rdata_name;
};
using RefMap = std::map<std::tuple<std::string, std::string, std::string>, RefValue>;

std::string ref_name(std::string n) {
    for (char& c : n)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (n.size() > 1 && n.back() == '.') n.pop_back();
    return n;
}

void ref_add(RefMap& m, const Exchange& e) {
    if (!e.response || !e.response->response) return;
    std::int64_t t = e.response->response_time_ns / 1000;
    for (const auto& rr : e.response->response->answers) {
        if (rr.rclass != 1) continue;
        bool lone = rr.type == 5 || rr.type == 2 || rr.type == 12 || rr.type == 39;
        std::string name = ref_name(rr.name), rdata = lone ? ref_name(rr.rdata) : rr.rdata;
        if (name.size() + rdata.size() > 2000) continue;
        std::string type = rr.type == 1 ? "A" : rr.type == 28 ? "AAAA" : rr.type == 5 ? "CNAME"
                         : rr.type == 15 ? "MX" : rr.type == 16 ? "TXT" : "TYPE" + std::to_string(rr.type);
        auto [it, fresh] = m.try_emplace({name, type, rdata});
        RefValue& v = it->second;
        if (fresh) {
            v.first_us = v.last_us = t;
            v.rdata_name = rdata_target_name(rr.type, rdata);
        }
        v.first_us = std::min(v.first_us, t);
        v.last_us = std::max(v.last_us, t);
        ++v.count;
        if (!e.response->query_zone.empty()) v.bailiwick = ref_name(e.response->query_zone);
        if (!e.response->identity.empty()) v.sensor_id = e.response->identity;
    }
}

std::string ref_encode(const RefMap& m) {
    std::string out;
    RowWriter w(out);
    for (const auto& [k, v] : m) {
        const auto& [name, type, rdata] = k;
        w.begin_row(10);
        w.text(name);
        w.text(type);
        w.text(rdata);
        if (!((type == "A" || type == "AAAA") && w.inet_text(rdata))) w.null();
        w.timestamptz_unix_us(v.first_us);
        w.timestamptz_unix_us(v.last_us);
        w.int8(static_cast<std::int64_t>(v.count));
        if (v.bailiwick.empty()) w.null(); else w.text(v.bailiwick);
        if (v.sensor_id.empty()) w.null(); else w.text(v.sensor_id);
        if (v.rdata_name.empty()) w.null(); else w.text(v.rdata_name);
    }
    return out;
}

}  // namespace

TEST_CASE("pdns aggregate matches a reference model, reused and merged", "[copy][pdns]") {
    std::mt19937 rng(12345);
    auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
    const std::vector<std::string> names = {"www.example.com", "WWW.Example.COM.", "a.example", "b.example.",
                                            "mail.example.org", "x.y.z.example.net", "short"};
    struct Rec { std::uint16_t type; std::uint16_t cls; std::string rdata; };
    const std::vector<Rec> recs = {
        {1, 1, "192.0.2.1"}, {1, 1, "192.0.2.2"}, {28, 1, "2001:db8::1"}, {5, 1, "Target.Example.COM."},
        {5, 1, "target.example.com"}, {15, 1, "10 Mail.example.org."}, {15, 1, "0 ."}, {16, 1, "\"v=spf1 -all\""},
        {16, 3, "\"chaos\""}, {65280, 1, "\\# 2 abcd"}, {65281, 1, "\\# 1 00"}, {300, 1, "\\# 0"},
        {16, 1, "\"" + std::string(2100, 'x') + "\""},
    };
    const std::vector<std::string> sensors = {"", "ns1", "ns2"};
    const std::vector<std::string> zones = {"", "example.com", "Example.ORG."};

    PdnsAggregate reused, merged, part;
    for (int round = 0; round < 20; ++round) {
        RefMap ref;
        reused.clear();
        merged.clear();
        part.clear();
        std::size_t n = 1 + pick(400);
        for (std::size_t i = 0; i < n; ++i) {
            Exchange e;
            e.response = std::make_unique<DnstapMessage>(response_message());
            e.response->identity = sensors[pick(sensors.size())];
            e.response->query_zone = zones[pick(zones.size())];
            e.response->response_time_ns = t0_ns + static_cast<std::int64_t>(pick(1'000'000)) * 1000;
            auto& answers = e.response->response->answers;
            answers.clear();
            for (std::size_t k = pick(4); k > 0; --k) {
                const Rec& r = recs[pick(recs.size())];
                answers.push_back(ResourceRecord{names[pick(names.size())], r.type, r.cls, 60, r.rdata});
            }
            ref_add(ref, e);
            reused.add(e);
            part.add(e);
            if (pick(10) == 0) merged.merge(std::move(part));  // chunks of a transaction
        }
        merged.merge(std::move(part));
        std::string want = ref_encode(ref);
        REQUIRE(reused.size() == ref.size());
        CHECK(reused.encode() == want);
        CHECK(merged.encode() == want);
        std::string appended = "prefix";
        merged.encode(appended);
        CHECK(appended == "prefix" + want);
        CHECK(part.empty());
    }
}

TEST_CASE("flags and opcode text as flags_to_text and opcode_to_text say", "[copy]") {
    Exchange e;
    e.response = std::make_unique<DnstapMessage>(response_message());
    for (std::uint32_t f = 0; f < 0x10000; f += 13) {
        e.response->response->flags = static_cast<std::uint16_t>(f);
        EncodedBatch b;
        append_exchange(e, b);
        auto r = parse_rows(b.rows).at(0);
        REQUIRE(*r[column("flags")] == flags_to_text(static_cast<std::uint16_t>(f)));
        REQUIRE(*r[column("opcode")] == opcode_to_text(e.response->response->opcode()));
    }
}

TEST_CASE("JSON strings: escapes as a character-by-character model", "[copy]") {
    auto model = [](std::string_view s) {
        std::string out = "\"";
        for (char ch : s) {
            auto c = static_cast<unsigned char>(ch);
            char buf[8];
            if (c == '"') out += "\\\"";
            else if (c == '\\') out += "\\\\";
            else if (c == '\n') out += "\\n";
            else if (c == '\r') out += "\\r";
            else if (c == '\t') out += "\\t";
            else if (c < 0x20 || c == 0x7f) {
                std::snprintf(buf, sizeof buf, "\\u%04x", c);
                out += buf;
            } else out += ch;
        }
        return out + "\"";
    };
    std::mt19937 rng(7);
    for (int i = 0; i < 2000; ++i) {
        std::string s(rng() % 12, ' ');
        for (char& c : s) c = static_cast<char>(rng() % 4 ? 'a' + rng() % 26 : rng() % 256);
        std::string got = "x";
        append_json_string(got, s);
        REQUIRE(got == "x" + model(s));
    }
}

namespace {

// Varied exchanges from a seeded generator (rng() % n only: the same on every platform):
// names with case, trailing and escaped dots, non-ASCII and invalid bytes; rdata with
// quotes, backslashes and control characters; lone queries and responses, errors,
// policies, EDNS on either side, rare types and rcodes, many answers.
std::vector<Exchange> varied_exchanges(std::mt19937& rng, std::size_t n) {
    auto pick = [&](std::size_t k) { return static_cast<std::size_t>(rng() % k); };
    const std::vector<std::string> names = {
        "www.example.com", "WWW.Example.COM.", "example.com.", ".", "a\\.b.example.", "a\\\\.example.",
        "caf\xc3\xa9.example", "bad\xff.example", "x\\032y.example", "q\"uote.example", "tab\t.example",
        "del\x7f.example", "MiXeD.CaSe.Org", "_sip._udp.example.net", std::string(200, 'l') + ".example",
        "\xe2\x82.trunc", "nul\\000.example", "short"};
    struct Rec { std::uint16_t type; std::string rdata; };
    const std::vector<Rec> recs = {
        {1, "192.0.2.1"}, {1, "192.0.2.200"}, {1, "not-an-address"}, {28, "2001:db8::1"}, {28, "::ffff:192.0.2.1"},
        {5, "Target.Example.COM."}, {5, "target.example.com"}, {5, "caf\xc3\xa9.example."}, {5, "."},
        {2, "NS1.example.net."}, {12, "a\\032b.example."}, {39, "example.net."},
        {15, "10 Mail.example.org."}, {15, "0 ."}, {15, "\\# 4 000a0000"},
        {16, "\"v=spf1 -all\""}, {16, "\"a\\\"b\" \"c\\\\d\""}, {16, "\"caf\xc3\xa9\" \"\xff\x01\""},
        {16, "\"" + std::string(2100, 'x') + "\""}, {16, "\"" + std::string(600, 'y') + "\""},
        {33, "0 5 5060 SIP.example.com."}, {35, "100 10 \"S\" \"SIP+D2U\" \"!^.* x$!sip:a@b!\" _sip._udp.Example.com."},
        {64, "1 svc.example.net. alpn=h2"}, {65, "1 . alpn=h2,h3"}, {36, "10 kx.example."}, {18, "1 afsdb.example."},
        {21, "10 relay.example."}, {6, "ns.example. host.example. 1 2 3 4 5"}, {43, "12345 13 2 ABCDEF"},
        {46, "A 13 2 300 20240101000000 20230101000000 1 example. sig=="}, {65280, "\\# 2 abcd"},
        {300, "\\# 0"}, {256, "\\# 1 ff"}, {4660, "\\# 3 010203"}, {99, "\"spf\""}, {255, "\\# 0"}};
    const std::vector<std::string> identities = {"", "ns1", "ns2", std::string("ns\0\xff", 4), "back\\slash",
                                                 "caf\xc3\xa9", "\xc2\x85", "sp ace"};
    const std::vector<std::string> zones = {"", "example.com", "Example.ORG.", "caf\xc3\xa9.", "\xff.", "."};
    const std::vector<std::string> texts = {"", "truncated", "bad_rr", "q\"uote\\", "caf\xc3\xa9", "\x01\xff",
                                            "198.51.100.0/24", "2001:db8::/56"};
    auto address = [&] {
        IpAddress a;
        switch (pick(4)) {
        case 0: return a;
        case 1: return ip4(static_cast<int>(pick(256)), static_cast<int>(pick(256)), 2, 1);
        default:
            a.length = 16;
            for (auto& b : a.bytes) b = static_cast<std::uint8_t>(pick(256));
            return a;
        }
    };
    auto dns = [&](bool response) {
        DnsMessage m;
        m.size = static_cast<std::uint32_t>(pick(5000));
        m.id = static_cast<std::uint16_t>(rng());
        m.flags = static_cast<std::uint16_t>(rng());
        m.rcode = pick(8) ? static_cast<std::uint16_t>(pick(24)) : static_cast<std::uint16_t>(pick(4096));
        m.has_question = pick(10) != 0;
        m.qname = names[pick(names.size())];
        m.qtype = pick(8) ? recs[pick(recs.size())].type : static_cast<std::uint16_t>(rng());
        m.qclass = pick(8) ? 1 : static_cast<std::uint16_t>(pick(300));
        m.error = pick(6) ? std::string() : texts[pick(texts.size())];
        if (pick(2)) {
            m.has_edns = true;
            m.edns_udp_size = static_cast<std::uint16_t>(rng());
            m.edns_do = pick(2);
            m.ecs = texts[pick(texts.size())];
        }
        if (response) {
            m.ancount = static_cast<std::uint16_t>(pick(100));
            m.nscount = static_cast<std::uint16_t>(pick(10));
            m.arcount = static_cast<std::uint16_t>(pick(10));
            std::size_t answers = pick(4) ? pick(4) : pick(40);
            for (std::size_t k = 0; k < answers; ++k) {
                const Rec& r = recs[pick(recs.size())];
                std::uint16_t cls = pick(10) ? 1 : static_cast<std::uint16_t>(pick(5));
                std::string name = names[pick(names.size())];
                if (pick(3) == 0) name = "h" + std::to_string(pick(300)) + "." + name;  // shared prefixes
                m.answers.push_back(ResourceRecord{name, r.type, cls, static_cast<std::uint32_t>(rng()), r.rdata});
            }
            if (pick(4) == 0) {
                m.ede_code = static_cast<int>(pick(30));
                m.ede_text = texts[pick(texts.size())];
            }
        }
        return m;
    };
    auto message = [&](bool response) {
        DnstapMessage m;
        m.identity = identities[pick(identities.size())];
        auto kind = static_cast<std::uint8_t>(1 + 2 * pick(7));  // a *_QUERY type
        m.type = static_cast<MessageType>(response ? kind + 1 : kind);
        if (pick(10) == 0) m.type = MessageType::unknown;
        m.protocol = static_cast<SocketProtocol>(pick(8));
        m.query_address = address();
        m.response_address = address();
        m.has_query_port = pick(8) != 0;
        m.query_port = static_cast<std::uint32_t>(pick(65536));
        m.has_response_port = pick(8) != 0;
        m.response_port = 53;
        m.query_time_ns = t0_ns + static_cast<std::int64_t>(pick(1'000'000'000));
        if (response) {
            m.response_time_ns = m.query_time_ns + static_cast<std::int64_t>(pick(100'000'000));
            if (pick(3) == 0) m.query_time_ns = -1;
        }
        m.query_zone = zones[pick(zones.size())];
        if (pick(5)) {
            if (response) m.response = dns(true);
            else m.query = dns(false);
        }
        if (pick(6) == 0) {
            m.policy.present = true;
            m.policy.type = texts[pick(texts.size())];
            m.policy.rule = names[pick(names.size())];
            m.policy.action = pick(2) ? "NXDOMAIN" : "";
            m.policy.match = texts[pick(texts.size())];
            m.policy.value = zones[pick(zones.size())];
        }
        return m;
    };
    std::vector<Exchange> out(n);
    for (auto& e : out) {
        std::size_t shape = pick(6);  // 0: lone query, 1: lone response, else a pair
        if (shape != 1) e.query = std::make_unique<DnstapMessage>(message(false));
        if (shape != 0) e.response = std::make_unique<DnstapMessage>(message(true));
        if (e.query && e.response && pick(4)) e.response->query_time_ns = e.query->query_time_ns;
    }
    return out;
}

// FNV-1a over everything a batch carries.
std::uint64_t digest(const EncodedBatch& b) {
    std::uint64_t h = 0xcbf29ce484222325ull;
    auto mix = [&](const void* p, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) h = (h ^ static_cast<const unsigned char*>(p)[i]) * 0x100000001b3ull;
    };
    mix(b.rows.data(), b.rows.size());
    mix(b.row_end.data(), b.row_end.size() * sizeof b.row_end[0]);
    mix(b.messages.data(), b.messages.size());
    mix(b.times_us.data(), b.times_us.size() * sizeof b.times_us[0]);
    mix(b.pdns_rows.data(), b.pdns_rows.size());
    mix(&b.pdns_count, sizeof b.pdns_count);
    return h;
}

}  // namespace

// The bytes of varied exchanges, pinned: the encoder is tuned for speed, and any change to
// its output (a single byte) shows here. The digests were taken from the plain encoder.
TEST_CASE("encoded bytes of varied exchanges are pinned", "[copy][pdns]") {
    std::mt19937 rng(20240611);
    std::vector<std::vector<Exchange>> chunks;
    for (std::size_t n : {1, 7, 200, 512, 1500}) chunks.push_back(varied_exchanges(rng, n));

    EncodedBatch all = encode_batch(chunks, true);
    CHECK(all.size() > 2000);
    CHECK(all.pdns_count > 1000);
    CHECK(digest(all) == 0xfc394888ca80afc2ull);

    // Per chunk, and through the writer's path: batches without pdns rows, aggregates merged.
    std::uint64_t per_chunk = 0;
    PdnsAggregate merged;
    for (const auto& c : chunks) {
        EncodedBatch b = encode_batch(std::span<const std::vector<Exchange>>(&c, 1), true, {}, true);
        merged.merge(std::move(b.pdns_map));
        per_chunk = per_chunk * 31 + digest(b);
    }
    CHECK(per_chunk == 0x99f64ce0037d48c2ull);
    CHECK(merged.encode() == all.pdns_rows);
}

TEST_CASE("pdns rows come in the conflict key's bytewise order", "[copy][pdns]") {
    // Names around the lengths the sort keys hold (8, 16, 24 bytes), prefixes of each other,
    // bytes above 0x7f; types whose texts sort unlike their numbers; rdata sharing prefixes.
    std::mt19937 rng(99);
    auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
    const std::vector<std::string> parts = {"a", "b", "ab", "host1234", "host12345", "x.example", "caf\xc3\xa9", "\xc3\xa9",
                                            "0", "-", "zz", "bench.example.com"};
    const std::vector<std::uint16_t> types = {1, 28, 5, 16, 15, 2, 65280, 300, 65, 99, 255, 1000};
    const std::vector<std::string> rdatas = {"192.0.2.1", "192.0.2.10", "192.0.2.100", "192.0.2.1000", "\"x\"", "\"xy\"",
                                             "10 a.example.", "10 a.example.net.", "\\# 0", "\\# 1 00", "2001:db8::1"};
    for (int round = 0; round < 30; ++round) {
        PdnsAggregate agg;
        for (std::size_t i = 0, n = 1 + pick(300); i < n; ++i) {
            Exchange e;
            e.response = std::make_unique<DnstapMessage>(response_message());
            auto& answers = e.response->response->answers;
            answers.clear();
            for (std::size_t k = 1 + pick(5); k > 0; --k) {
                std::string name;
                for (std::size_t p = 1 + pick(4); p > 0; --p) name += (name.empty() ? "" : ".") + parts[pick(parts.size())];
                answers.push_back(ResourceRecord{name, types[pick(types.size())], 1, 60, rdatas[pick(rdatas.size())]});
            }
            agg.add(e);
        }
        auto rows = parse_rows(agg.encode());
        REQUIRE(rows.size() == agg.size());
        for (std::size_t i = 1; i < rows.size(); ++i) {
            auto key = [](const Row& r) { return std::make_tuple(*r[0], *r[1], *r[2]); };
            // std::string compares bytes as unsigned char, like COLLATE "C".
            REQUIRE(key(rows[i - 1]) < key(rows[i]));
        }
    }
}
