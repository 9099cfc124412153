#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "dnstap.pb.h"
#include "dnstap_collector/decode.hpp"

using namespace dnstap_collector;

namespace {

using Frame = std::vector<std::uint8_t>;

std::filesystem::path data_dir() { return std::filesystem::path(__FILE__).parent_path() / "data"; }

// Data frames of an fstrm file written by BIND (dnstap-output file): a START control frame
// (escape 0, length, payload), then 4-byte big-endian lengths and payloads, then STOP.
std::vector<Frame> read_fstrm(const std::string& file) {
    std::ifstream in(data_dir() / file, std::ios::binary);
    REQUIRE(in);
    const std::vector<std::uint8_t> b{std::istreambuf_iterator<char>(in), {}};
    auto be32 = [&](std::size_t at) {
        REQUIRE(at + 4 <= b.size());
        return (std::uint32_t{b[at]} << 24) | (std::uint32_t{b[at + 1]} << 16) |
               (std::uint32_t{b[at + 2]} << 8) | b[at + 3];
    };
    std::vector<Frame> frames;
    std::size_t pos = 0;
    while (pos < b.size()) {
        const std::uint32_t len = be32(pos);
        pos += 4;
        if (len == 0) {  // control frame: skip it
            const std::uint32_t clen = be32(pos);
            pos += 4 + clen;
            continue;
        }
        REQUIRE(pos + len <= b.size());
        frames.emplace_back(b.begin() + static_cast<std::ptrdiff_t>(pos),
                            b.begin() + static_cast<std::ptrdiff_t>(pos + len));
        pos += len;
    }
    return frames;
}

std::vector<std::string> read_lines(const std::string& file) {
    std::ifstream in(data_dir() / file);
    REQUIRE(in);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

DnstapMessage decode_ok(const Frame& f) {
    DnstapMessage m;
    REQUIRE(decode_dnstap(f, m) == DecodeStatus::ok);
    return m;
}

Frame serialize(const dnstap::Dnstap& d) {
    std::string s;
    REQUIRE(d.SerializeToString(&s));
    return {s.begin(), s.end()};
}

// A minimal well-formed frame to modify.
dnstap::Dnstap make_frame(dnstap::Message_Type type = dnstap::Message_Type_CLIENT_QUERY) {
    dnstap::Dnstap d;
    d.set_type(dnstap::Dnstap_Type_MESSAGE);
    d.set_identity("ns1");
    dnstap::Message* m = d.mutable_message();
    m->set_type(type);
    m->set_socket_family(dnstap::INET);
    m->set_socket_protocol(dnstap::UDP);
    m->set_query_address(std::string("\xc0\x00\x02\x01", 4));
    m->set_response_address(std::string("\xc0\x00\x02\x35", 4));
    m->set_query_port(40000);
    m->set_response_port(53);
    m->set_query_time_sec(1'700'000'000);
    m->set_query_time_nsec(123'456'789);
    // id 0x0102, rd, one question: a/IN/A
    m->set_query_message(std::string("\x01\x02\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01" "a\x00\x00\x01\x00\x01", 19));
    return d;
}

}  // namespace

TEST_CASE("real BIND auth capture decodes like dnstap-read prints it", "[decode]") {
    const auto frames = read_fstrm("bind_auth.fstrm");
    const auto lines = read_lines("bind_auth.txt");
    REQUIRE(frames.size() == 24);
    REQUIRE(lines.size() == frames.size());
    for (std::size_t i = 0; i < frames.size(); ++i) {
        const DnstapMessage m = decode_ok(frames[i]);
        CHECK(format_text(m) == lines[i]);
        CHECK(m.identity == "ns-test");
        CHECK(m.version == "bind-test");
        CHECK(m.frame_size == frames[i].size());
    }
}

TEST_CASE("real BIND resolver capture decodes like dnstap-read prints it", "[decode]") {
    const auto frames = read_fstrm("bind_resolver.fstrm");
    const auto lines = read_lines("bind_resolver.txt");
    REQUIRE(lines.size() == frames.size());
    std::map<MessageType, int> types;
    for (std::size_t i = 0; i < frames.size(); ++i) {
        const DnstapMessage m = decode_ok(frames[i]);
        CHECK(format_text(m) == lines[i]);
        CHECK(m.identity == "resolver-test");
        ++types[m.type];
    }
    CHECK(types[MessageType::client_query] == 4);
    CHECK(types[MessageType::client_response] == 4);
    CHECK(types[MessageType::resolver_query] == 4);
    CHECK(types[MessageType::resolver_response] == 4);
}

TEST_CASE("BIND frames: fields of a query and its response", "[decode]") {
    const auto frames = read_fstrm("bind_auth.fstrm");
    const DnstapMessage q = decode_ok(frames[0]);
    CHECK(q.type == MessageType::auth_query);
    CHECK(is_query(q.type));
    CHECK(q.family == SocketFamily::inet);
    CHECK(q.protocol == SocketProtocol::udp);
    CHECK(q.query_address.to_string() == "127.0.0.1");
    CHECK(q.response_address.to_string() == "127.0.0.1");
    CHECK(q.has_query_port);
    CHECK(q.query_port == 60195);
    CHECK(q.response_port == 5391);
    CHECK(q.query_time_ns > 1'700'000'000'000'000'000);
    CHECK(q.response_time_ns == -1);
    CHECK(q.event_time_ns() == q.query_time_ns);
    REQUIRE(q.query);
    CHECK_FALSE(q.response);
    CHECK(q.primary() == &*q.query);
    CHECK(q.query->qname == "www.example.test");
    CHECK(q.query->qtype == 1);
    CHECK(q.query->has_edns);
    CHECK(q.query->edns_udp_size == 1232);
    CHECK_FALSE(q.query->qr());

    const DnstapMessage r = decode_ok(frames[2]);
    CHECK(r.type == MessageType::client_response);  // BIND tags its auth answers so
    CHECK_FALSE(is_query(r.type));
    REQUIRE(r.response);
    CHECK(r.primary() == &*r.response);
    CHECK(r.event_time_ns() == r.response_time_ns);
    CHECK(r.response_time_ns >= q.query_time_ns);
    CHECK(r.response->id == q.query->id);
    CHECK(r.response->aa());
    REQUIRE(r.response->answers.size() == 2);
    CHECK(r.response->answers[0].name == "www.example.test");
    CHECK(r.response->answers[0].type == 1);
    CHECK(r.response->answers[0].ttl == 300);
    CHECK((r.response->answers[0].rdata == "192.0.2.1" || r.response->answers[0].rdata == "192.0.2.2"));
}

TEST_CASE("BIND frames: answers of every captured type in presentation format", "[decode]") {
    std::map<std::string, std::vector<std::string>> answers;  // qname/type -> rdata
    std::map<std::string, std::string> rcodes;
    for (const Frame& f : read_fstrm("bind_auth.fstrm")) {
        const DnstapMessage m = decode_ok(f);
        if (!m.response || !m.response->has_question) continue;
        const auto key = lowercase_name(m.response->qname) + "/" + type_to_text(m.response->qtype);
        rcodes[key] = rcode_to_text(m.response->rcode);
        for (const auto& rr : m.response->answers) answers[key].push_back(type_to_text(rr.type) + " " + rr.rdata);
    }
    CHECK(answers["www.example.test/AAAA"] == std::vector<std::string>{"AAAA 2001:db8::1"});
    CHECK(answers["mail.example.test/MX"] == std::vector<std::string>{"MX 10 mx1.example.test"});
    CHECK(answers["txt.example.test/TXT"] == std::vector<std::string>{"TXT \"hello world\" \"x;y\\\"z\""});
    CHECK(answers["odd.example.test/TYPE65280"] == std::vector<std::string>{"TYPE65280 \\# 3 010203"});
    REQUIRE(answers["alias.example.test/A"].size() == 3);
    CHECK(answers["alias.example.test/A"][0] == "CNAME www.example.test");
    REQUIRE(answers["example.test/SOA"].size() == 1);
    CHECK(answers["example.test/SOA"][0] ==
          "SOA ns1.example.test hostmaster.example.test 1 3600 600 86400 60");
    CHECK(rcodes["nope.example.test/A"] == "NXDOMAIN");
    CHECK(rcodes["other.zone/A"] == "REFUSED");
}

TEST_CASE("BIND frames: IPv6, TCP, client subnet and no-EDNS queries", "[decode]") {
    bool saw_v6 = false, saw_tcp = false, saw_ecs = false, saw_no_edns = false;
    for (const Frame& f : read_fstrm("bind_auth.fstrm")) {
        const DnstapMessage m = decode_ok(f);
        if (m.family == SocketFamily::inet6) {
            saw_v6 = true;
            CHECK(m.query_address.to_string() == "::1");
            CHECK(m.query_address.length == 16);
        }
        if (m.protocol == SocketProtocol::tcp) {
            saw_tcp = true;
            CHECK(m.primary()->qname == "txt.example.test");
        }
        if (m.query && !m.query->ecs.empty()) {
            saw_ecs = true;
            CHECK(m.query->ecs == "198.51.100.0/24");
        }
        if (m.query && !m.query->has_edns) saw_no_edns = true;
    }
    CHECK(saw_v6);
    CHECK(saw_tcp);
    CHECK(saw_ecs);
    CHECK(saw_no_edns);
}

TEST_CASE("route_hash is equal for a query and its response", "[decode][route]") {
    for (const char* file : {"bind_auth.fstrm", "bind_resolver.fstrm"}) {
        std::map<std::tuple<int, std::uint32_t, std::uint16_t>, std::vector<std::uint64_t>> by_exchange;
        std::set<std::uint64_t> distinct;
        for (const Frame& f : read_fstrm(file)) {
            const DnstapMessage m = decode_ok(f);
            const std::uint64_t h = route_hash(f);
            CHECK(h != 0);
            distinct.insert(h);
            const auto key = std::make_tuple(static_cast<int>(kind_of(m.type) == "resolver"),
                                             m.query_port, m.primary()->id);
            by_exchange[key].push_back(h);
        }
        CHECK(distinct.size() == by_exchange.size());
        for (const auto& [key, hashes] : by_exchange) {
            REQUIRE(hashes.size() == 2);
            CHECK(hashes[0] == hashes[1]);
        }
    }
}

TEST_CASE("route_hash changes with each key field", "[decode][route]") {
    const std::uint64_t base = route_hash(serialize(make_frame()));
    auto with = [](auto change) {
        dnstap::Dnstap d = make_frame();
        change(d);
        return route_hash(serialize(d));
    };
    CHECK(base != 0);
    CHECK(with([](dnstap::Dnstap& d) { d.set_identity("ns2"); }) != base);
    CHECK(with([](dnstap::Dnstap& d) { d.mutable_message()->set_query_port(40001); }) != base);
    CHECK(with([](dnstap::Dnstap& d) { d.mutable_message()->set_socket_protocol(dnstap::TCP); }) != base);
    CHECK(with([](dnstap::Dnstap& d) {
        d.mutable_message()->mutable_query_message()->at(1) = 3;  // DNS id
    }) != base);
    // Type and times are not part of the key.
    CHECK(with([](dnstap::Dnstap& d) {
        d.mutable_message()->set_type(dnstap::Message_Type_CLIENT_RESPONSE);
        d.mutable_message()->set_response_message(d.message().query_message());
        d.mutable_message()->clear_query_message();
        d.mutable_message()->set_response_time_sec(1'700'000'001);
    }) == base);
}

TEST_CASE("route_hash is safe on garbage and truncated frames", "[decode][route]") {
    CHECK(route_hash({}) == 0);
    const std::uint8_t group[] = {0x0B, 0x0C};
    CHECK(route_hash(group) == 0);
    const std::uint8_t long_varint[] = {0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01};
    CHECK(route_hash(long_varint) == 0);
    const std::uint8_t huge_length[] = {0x72, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x00};
    CHECK(route_hash(huge_length) == 0);

    const Frame good = read_fstrm("bind_auth.fstrm").at(0);
    for (std::size_t n = 0; n < good.size(); ++n) {
        (void)route_hash(std::span(good.data(), n));  // must not read past n
    }
    std::mt19937 rng(7);
    for (int i = 0; i < 20000; ++i) {
        Frame f = good;
        for (int k = 0; k < 3; ++k) f[rng() % f.size()] = static_cast<std::uint8_t>(rng());
        (void)route_hash(f);
        Frame g(rng() % 64);
        for (auto& c : g) c = static_cast<std::uint8_t>(rng());
        (void)route_hash(g);
    }
}

TEST_CASE("decode_dnstap tolerates mutated frames", "[decode]") {
    const auto frames = read_fstrm("bind_auth.fstrm");
    std::mt19937 rng(99);
    DnstapMessage m;
    for (int i = 0; i < 5000; ++i) {
        Frame f = frames[rng() % frames.size()];
        for (int k = 0; k < 3; ++k) f[rng() % f.size()] = static_cast<std::uint8_t>(rng());
        f.resize(rng() % (f.size() + 1));
        (void)decode_dnstap(f, m);
    }
}

TEST_CASE("bytes that are not protobuf are bad_protobuf", "[decode]") {
    DnstapMessage m;
    const std::uint8_t junk[] = {0xFF, 0xFF, 0xFF};
    CHECK(decode_dnstap(junk, m) == DecodeStatus::bad_protobuf);
    // Well-formed protobuf but the required Dnstap.type is missing.
    const std::uint8_t no_type[] = {0x0A, 0x01, 'x'};
    CHECK(decode_dnstap(no_type, m) == DecodeStatus::bad_protobuf);
}

TEST_CASE("a dnstap frame without a message is not_message", "[decode]") {
    dnstap::Dnstap d = make_frame();
    d.clear_message();
    DnstapMessage m;
    CHECK(decode_dnstap(serialize(d), m) == DecodeStatus::not_message);
}

TEST_CASE("a bad DNS payload is dns_error and keeps the rest", "[decode]") {
    dnstap::Dnstap d = make_frame();
    d.mutable_message()->mutable_query_message()->resize(14);  // header + part of the name
    DnstapMessage m;
    REQUIRE(decode_dnstap(serialize(d), m) == DecodeStatus::dns_error);
    REQUIRE(m.query);
    CHECK(m.query->error == "truncated");
    CHECK(m.query->id == 0x0102);
    CHECK(m.query_port == 40000);
    CHECK(m.identity == "ns1");
}

TEST_CASE("hand-made frame: every field mapped", "[decode]") {
    dnstap::Dnstap d = make_frame(dnstap::Message_Type_RESOLVER_RESPONSE);
    d.set_version("v\x01");
    d.set_extra("x");
    dnstap::Message* msg = d.mutable_message();
    msg->set_socket_family(dnstap::INET6);
    msg->set_socket_protocol(dnstap::DOH);
    msg->set_query_address(std::string("\x20\x01\x0d\xb8", 4) + std::string(11, '\0') + "\x01");
    msg->set_response_address("abc");  // bad length
    msg->set_response_time_sec(1'700'000'001);
    msg->set_response_time_nsec(5);
    msg->set_query_zone(std::string("\x07" "Example\x04test\x00", 14));
    msg->set_http_protocol(dnstap::HTTP2);
    dnstap::Policy* p = msg->mutable_policy();
    p->set_type("RPZ");
    p->set_rule(std::string("\x03" "bad\x03rpz\x00", 9));
    p->set_action(dnstap::Policy_Action_NXDOMAIN);
    p->set_match(dnstap::Policy_Match_CLIENT_IP);
    p->set_value(std::string("\xc6\x33\x64\x07", 4));

    DnstapMessage m;
    REQUIRE(decode_dnstap(serialize(d), m) == DecodeStatus::ok);
    CHECK(m.type == MessageType::resolver_response);
    CHECK(m.version == "v\\001");
    CHECK(m.extra == "x");
    CHECK(m.family == SocketFamily::inet6);
    CHECK(m.protocol == SocketProtocol::doh);
    CHECK(m.query_address.to_string() == "2001:db8::1");
    CHECK(m.response_address.empty());
    CHECK(m.bad_address_length);
    CHECK(m.query_time_ns == 1'700'000'000'123'456'789);
    CHECK(m.response_time_ns == 1'700'000'001'000'000'005);
    CHECK(m.event_time_ns() == m.response_time_ns);
    CHECK(m.query_zone == "example.test");
    CHECK(m.http_protocol == 2);
    CHECK(m.policy.present);
    CHECK(m.policy.type == "RPZ");
    CHECK(m.policy.rule == "bad.rpz");
    CHECK(m.policy.action == "NXDOMAIN");
    CHECK(m.policy.match == "CLIENT_IP");
    CHECK(m.policy.value == "198.51.100.7");
    // A response frame that only has the query message: that is its primary.
    REQUIRE(m.query);
    CHECK(m.primary() == &*m.query);

    SECTION("policy value by match kind") {
        p->set_match(dnstap::Policy_Match_QNAME);
        p->set_value(std::string("\x02" "Ev\x03" "com\x00", 8));
        REQUIRE(decode_dnstap(serialize(d), m) == DecodeStatus::ok);
        CHECK(m.policy.value == "ev.com");
        p->clear_match();
        p->set_value("\x01\xab");
        REQUIRE(decode_dnstap(serialize(d), m) == DecodeStatus::ok);
        CHECK(m.policy.value == "01ab");
        CHECK(m.policy.match.empty());
    }
}

TEST_CASE("message type and protocol names", "[decode]") {
    CHECK(short_name(MessageType::auth_query) == "AQ");
    CHECK(short_name(MessageType::client_response) == "CR");
    CHECK(short_name(MessageType::update_response) == "UR");
    CHECK(kind_of(MessageType::forwarder_query) == "forwarder");
    CHECK(kind_of(MessageType::tool_response) == "tool");
    CHECK(kind_of(MessageType::update_query) == "update");
    CHECK(to_string(MessageType::client_query) == "CLIENT_QUERY");
    CHECK(to_string(MessageType::stub_response) == "STUB_RESPONSE");
    CHECK(to_string(SocketProtocol::udp) == "udp");
    CHECK(to_string(SocketProtocol::dnscrypt_tcp) == "dnscrypt-tcp");
    CHECK(to_string(SocketProtocol::doq) == "doq");
    CHECK(is_query(MessageType::stub_query));
    CHECK_FALSE(is_query(MessageType::stub_response));
    CHECK(IpAddress{}.to_string().empty());
}

TEST_CASE("format_json carries every field and escapes strings", "[decode]") {
    dnstap::Dnstap d = make_frame();
    d.set_identity("ns\"1\\\n");
    DnstapMessage m;
    REQUIRE(decode_dnstap(serialize(d), m) == DecodeStatus::ok);
    const std::string j = format_json(m);
    CHECK(j.front() == '{');
    CHECK(j.back() == '}');
    CHECK(j.find('\n') == std::string::npos);
    CHECK(j.find(R"("identity":"ns\"1\\\\\\010")") != std::string::npos);
    CHECK(j.find(R"("type":"CLIENT_QUERY")") != std::string::npos);
    CHECK(j.find(R"("query_address":"192.0.2.1","query_port":40000)") != std::string::npos);
    CHECK(j.find(R"("query_time":"2023-11-14T22:13:20.123456789Z")") != std::string::npos);
    CHECK(j.find(R"("question":{"name":"a","class":"IN","type":"A"})") != std::string::npos);
    CHECK(j.find(R"("flags":"rd")") != std::string::npos);

    const DnstapMessage r = decode_ok(read_fstrm("bind_auth.fstrm").at(2));
    const std::string rj = format_json(r);
    CHECK(rj.find(R"("answers":[{"name":"www.example.test","ttl":300,"class":"IN","type":"A","rdata":"192.0.2.)") !=
          std::string::npos);
}

TEST_CASE("decoding into a reused message gives what a fresh message gets", "[decode]") {
    // Frames of both captures, in several orders, so each frame lands on storage that held a
    // query, a response, answers, a bad frame or a policy before.
    std::vector<Frame> frames = read_fstrm("bind_auth.fstrm");
    for (auto& f : read_fstrm("bind_resolver.fstrm")) frames.push_back(std::move(f));
    frames.push_back(Frame{0x0a, 0x03, 'a', 'b'});  // truncated protobuf
    dnstap::Dnstap p = make_frame(dnstap::Message_Type_CLIENT_RESPONSE);
    p.mutable_message()->clear_query_message();
    p.mutable_message()->set_response_message(std::string("\x01\x02\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x01" "a\x00\x00\x01\x00\x01", 19));
    p.mutable_message()->mutable_policy()->set_type("RPZ");
    p.mutable_message()->mutable_policy()->set_match(dnstap::Policy_Match_QNAME);
    frames.push_back(serialize(p));
    frames.push_back(serialize(make_frame()));
    std::mt19937 rng(7);
    DnstapMessage reused;
    for (int round = 0; round < 4; ++round) {
        for (const Frame& f : frames) {
            DnstapMessage fresh;
            const DecodeStatus a = decode_dnstap(f, fresh);
            const DecodeStatus b = decode_dnstap(f, reused);
            REQUIRE(a == b);
            if (a != DecodeStatus::ok && a != DecodeStatus::dns_error) continue;
            CHECK(format_json(reused) == format_json(fresh));
            CHECK(format_text(reused) == format_text(fresh));
            CHECK(reused.query.has_value() == fresh.query.has_value());
            CHECK(reused.response.has_value() == fresh.response.has_value());
            if (fresh.response) CHECK(reused.response->answers.size() == fresh.response->answers.size());
        }
        std::shuffle(frames.begin(), frames.end(), rng);
    }
}

TEST_CASE("identity text reused from the last decode only when it needs no escaping", "[decode]") {
    DnstapMessage m;
    dnstap::Dnstap d = make_frame();
    d.set_identity(std::string("a\x01", 2));
    REQUIRE(decode_dnstap(serialize(d), m) == DecodeStatus::ok);
    CHECK(m.identity == "a\\001");
    d.set_identity("a\\001");  // the bytes of the text above: escaped again, not kept
    REQUIRE(decode_dnstap(serialize(d), m) == DecodeStatus::ok);
    CHECK(m.identity == "a\\\\001");
    d.set_identity("ns1");
    REQUIRE(decode_dnstap(serialize(d), m) == DecodeStatus::ok);
    REQUIRE(decode_dnstap(serialize(d), m) == DecodeStatus::ok);
    CHECK(m.identity == "ns1");
    d.clear_identity();
    REQUIRE(decode_dnstap(serialize(d), m) == DecodeStatus::ok);
    CHECK(m.identity.empty());
    d.set_identity("ns1");
    REQUIRE(decode_dnstap(serialize(d), m) == DecodeStatus::ok);
    REQUIRE(decode_dnstap(Frame{0x0a, 0x03, 'a', 'b'}, m) == DecodeStatus::bad_protobuf);
    CHECK(m.identity.empty());
}
