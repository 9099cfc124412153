// decode_dnstap (hand-written wire reader) against the decode of before it, which parsed the
// frame with the code generated from proto/dnstap.proto (tests/fuzz/decode_reference.hpp):
// same DecodeStatus and same format_json() for the fuzz seeds (frames of a real named) and
// for variants of them: every truncation, single-byte changes, unknown fields of every wire
// type, duplicated and merged fields, and hand-made edge cases of the wire format.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "../fuzz/decode_reference.hpp"
#include "dnstap.pb.h"
#include "dnstap_collector/decode.hpp"

using namespace dnstap_collector;

namespace {

using Frame = std::vector<std::uint8_t>;

std::vector<Frame> corpus() {
    const auto dir = std::filesystem::path(__FILE__).parent_path().parent_path() / "fuzz" /
                     "corpus" / "fuzz_dnstap_decode";
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(dir))
        if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    std::vector<Frame> frames;
    for (const auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        frames.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    return frames;
}

struct Counts {
    std::size_t frames = 0;
    std::size_t by_status[4] = {};
};

// Every field of DnstapMessage but the parsed DNS messages (compared through format_json).
bool same_fields(const DnstapMessage& a, const DnstapMessage& b) {
    return a.identity == b.identity && a.version == b.version && a.extra == b.extra &&
           a.type == b.type && a.family == b.family && a.protocol == b.protocol &&
           a.query_address == b.query_address && a.response_address == b.response_address &&
           a.bad_address_length == b.bad_address_length && a.query_port == b.query_port &&
           a.response_port == b.response_port && a.has_query_port == b.has_query_port &&
           a.has_response_port == b.has_response_port && a.query_time_ns == b.query_time_ns &&
           a.response_time_ns == b.response_time_ns && a.query_zone == b.query_zone &&
           a.policy.type == b.policy.type && a.policy.rule == b.policy.rule &&
           a.policy.action == b.policy.action && a.policy.match == b.policy.match &&
           a.policy.value == b.policy.value && a.policy.present == b.policy.present &&
           a.http_protocol == b.http_protocol && a.frame_size == b.frame_size &&
           a.query.has_value() == b.query.has_value() &&
           a.response.has_value() == b.response.has_value();
}

// Decodes both ways into messages that are reused (as a worker does) and compares.
class Differ {
public:
    bool same(const Frame& f) {
        const DecodeStatus a = reference::decode_dnstap_reference(f, ref_);
        const DecodeStatus b = decode_dnstap(f, new_);
        ++counts.frames;
        ++counts.by_status[static_cast<int>(b)];
        if (a == b && format_json(ref_) == format_json(new_) && format_text(ref_) == format_text(new_) &&
            same_fields(ref_, new_))
            return true;
        if (mismatches_++ < 5) {
            std::string hex;
            for (const auto c : f) {
                static constexpr char digits[] = "0123456789abcdef";
                hex += digits[c >> 4];
                hex += digits[c & 15];
            }
            UNSCOPED_INFO("frame " << hex << "\nreference " << static_cast<int>(a) << " "
                                   << format_json(ref_) << "\nnew       " << static_cast<int>(b)
                                   << " " << format_json(new_));
        }
        return false;
    }
    Counts counts;

private:
    DnstapMessage ref_, new_;
    int mismatches_ = 0;
};

void put_varint(Frame& f, std::uint64_t v) {
    while (v >= 0x80) {
        f.push_back(static_cast<std::uint8_t>(v | 0x80));
        v >>= 7;
    }
    f.push_back(static_cast<std::uint8_t>(v));
}

void put_tag(Frame& f, std::uint32_t number, std::uint32_t wire_type) {
    put_varint(f, std::uint64_t{number} << 3 | wire_type);
}

Frame cat(Frame a, const Frame& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

// Unknown fields of every wire type protobuf accepts (and a well-formed group).
std::vector<Frame> unknown_fields() {
    std::vector<Frame> out;
    for (const std::uint32_t number : {4u, 13u, 17u, 100u, 536870911u}) {
        Frame f;
        put_tag(f, number, 0);
        put_varint(f, 0xFFFFFFFFFFFFFFFFULL);
        out.push_back(f);
        f.clear();
        put_tag(f, number, 1);
        f.insert(f.end(), 8, 0xAB);
        out.push_back(f);
        f.clear();
        put_tag(f, number, 2);
        put_varint(f, 3);
        f.insert(f.end(), {1, 2, 3});
        out.push_back(f);
        f.clear();
        put_tag(f, number, 5);
        f.insert(f.end(), 4, 0xCD);
        out.push_back(f);
        f.clear();
        put_tag(f, number, 3);
        put_tag(f, 1, 0);
        put_varint(f, 7);
        put_tag(f, 2, 3);  // nested group
        put_tag(f, 2, 4);
        put_tag(f, number, 4);
        out.push_back(f);
    }
    return out;
}

Frame serialize(const google::protobuf::Message& m) {
    std::string s;
    REQUIRE(m.SerializePartialToString(&s));
    return {s.begin(), s.end()};
}

}  // namespace

// Single-threaded: ThreadSanitizer adds nothing here but a 10x slowdown, so its build
// checks every 8th position (the fuzz target covers the rest).
#if defined(__SANITIZE_THREAD__)
constexpr std::size_t position_stride = 8;
#else
constexpr std::size_t position_stride = 1;
#endif

TEST_CASE("hand-written decode equals the protobuf decode on the seeds and their variants",
          "[decode][differential]") {
    const auto frames = corpus();
    REQUIRE(frames.size() > 100);
    Differ d;
    const auto unknowns = unknown_fields();

    for (std::size_t i = 0; i < frames.size(); ++i) {
        const Frame& f = frames[i];
        CHECK(d.same(f));
        // Every truncation.
        for (std::size_t n = 0; n < f.size(); n += position_stride) CHECK(d.same(Frame(f.begin(), f.begin() + static_cast<std::ptrdiff_t>(n))));
        // Every byte changed: low bit, high bit, all bits, and set to 0x00 / 0xFF.
        for (std::size_t at = 0; at < f.size(); at += position_stride) {
            for (const std::uint8_t x : {0x80, 0xFF}) {  // few: the suite also runs under TSan; the fuzz target does the rest
                Frame g = f;
                g[at] ^= x;
                CHECK(d.same(g));
            }
            Frame g = f;
            g[at] = 0;
            CHECK(d.same(g));
        }
        // Unknown fields appended at the top level, and truncated.
        for (const auto& u : unknowns) {
            const Frame g = cat(f, u);
            CHECK(d.same(g));
            CHECK(d.same(cat(u, f)));
            CHECK(d.same(Frame(g.begin(), g.end() - 1)));
        }
        // Duplicated fields: the frame twice (every field twice, embedded messages merged), and
        // merged with the next frame (other values for the same fields).
        CHECK(d.same(cat(f, f)));
        CHECK(d.same(cat(f, frames[(i + 1) % frames.size()])));

        // Through the generated code: unknown fields inside Message and Policy, fields set to
        // other values, required fields missing, enum values outside the enum.
        dnstap::Dnstap p;
        if (!p.ParsePartialFromArray(f.data(), static_cast<int>(f.size()))) continue;
        for (const auto& u : unknowns) {
            dnstap::Dnstap q = p;
            Frame inner = serialize(q.message());
            inner.insert(inner.end(), u.begin(), u.end());
            Frame g;
            put_tag(g, 15, 0);
            put_varint(g, 1);
            put_tag(g, 14, 2);
            put_varint(g, inner.size());
            g.insert(g.end(), inner.begin(), inner.end());
            CHECK(d.same(g));
            // The same inside Policy.
            Frame pol = serialize(q.message().policy());
            pol.insert(pol.end(), u.begin(), u.end());
            Frame msg = serialize(q.message());
            put_tag(msg, 15, 2);
            put_varint(msg, pol.size());
            msg.insert(msg.end(), pol.begin(), pol.end());
            Frame h;
            put_tag(h, 15, 0);
            put_varint(h, 1);
            put_tag(h, 14, 2);
            put_varint(h, msg.size());
            h.insert(h.end(), msg.begin(), msg.end());
            CHECK(d.same(h));
        }
        {
            dnstap::Dnstap q = p;
            q.clear_type();
            CHECK(d.same(serialize(q)));
            q = p;
            q.mutable_message()->clear_type();
            CHECK(d.same(serialize(q)));
            q = p;
            q.clear_message();
            CHECK(d.same(serialize(q)));
            q = p;
            q.mutable_message()->set_query_time_nsec(1'000'000'000);
            CHECK(d.same(serialize(q)));
            q = p;
            q.mutable_message()->set_query_time_sec(~std::uint64_t{0});
            CHECK(d.same(serialize(q)));
            q = p;
            auto* pol = q.mutable_message()->mutable_policy();
            pol->set_type("rpz\x01\xff");
            pol->set_rule(std::string("\x03" "bad\x07" "example\x00", 13));
            pol->set_action(dnstap::Policy_Action_LOCAL_DATA);
            for (const auto match : {dnstap::Policy_Match_QNAME, dnstap::Policy_Match_CLIENT_IP,
                                     dnstap::Policy_Match_RESPONSE_IP, dnstap::Policy_Match_NS_NAME,
                                     dnstap::Policy_Match_NS_IP}) {
                pol->set_match(match);
                pol->set_value(std::string("\xc0\x00\x02\x01", 4));
                CHECK(d.same(serialize(q)));
                pol->set_value(std::string("\x03" "www\x00", 5));
                CHECK(d.same(serialize(q)));
            }
            // Enum values outside their enum, after a valid one and alone, and values that are
            // valid in their low 32 bits only.
            const Frame base = serialize(p);
            for (const std::uint32_t number : {1u, 2u, 3u, 16u}) {
                for (const std::uint64_t v : {0ULL, 3ULL, 8ULL, 15ULL, 17ULL, 0x100000001ULL,
                                              0xFFFFFFFFFFFFFFFFULL, 0x8000000000000002ULL}) {
                    Frame inner = serialize(p.message());
                    put_tag(inner, number, 0);
                    put_varint(inner, v);
                    Frame g;
                    put_tag(g, 15, 0);
                    put_varint(g, 1);
                    put_tag(g, 14, 2);
                    put_varint(g, inner.size());
                    g.insert(g.end(), inner.begin(), inner.end());
                    CHECK(d.same(g));
                    Frame alone;
                    put_tag(alone, 15, 0);
                    put_varint(alone, 1);
                    Frame only;
                    put_tag(only, number, 0);
                    put_varint(only, v);
                    put_tag(alone, 14, 2);
                    put_varint(alone, only.size());
                    alone.insert(alone.end(), only.begin(), only.end());
                    CHECK(d.same(alone));
                }
            }
            for (const std::uint64_t v : {0ULL, 2ULL, 0x100000001ULL}) {
                Frame g = base;
                put_tag(g, 15, 0);
                put_varint(g, v);
                CHECK(d.same(g));
                Frame h;
                put_tag(h, 15, 0);
                put_varint(h, v);
                CHECK(d.same(cat(h, Frame(base.begin() + 2, base.end()))));
            }
        }
    }

    // Random multi-byte mutations and splices of the seeds.
    std::mt19937 rng(12345);
    const std::uint8_t interesting[] = {0x00, 0x01, 0x03, 0x04, 0x07, 0x0b, 0x0c, 0x72, 0x78, 0x7f, 0x80, 0xff};
    for (int round = 0; round < 2000; ++round) {
        Frame g = frames[rng() % frames.size()];
        const int edits = 1 + static_cast<int>(rng() % 4);
        for (int e = 0; e < edits && !g.empty(); ++e) {
            const std::size_t at = rng() % g.size();
            switch (rng() % 4) {
            case 0: g[at] = interesting[rng() % std::size(interesting)]; break;
            case 1: g.insert(g.begin() + static_cast<std::ptrdiff_t>(at), interesting[rng() % std::size(interesting)]); break;
            case 2: g.erase(g.begin() + static_cast<std::ptrdiff_t>(at)); break;
            default: g[at] = static_cast<std::uint8_t>(rng()); break;
            }
        }
        CHECK(d.same(g));
    }
    INFO("frames " << d.counts.frames);
    CHECK(d.counts.by_status[static_cast<int>(DecodeStatus::ok)] > 1000);
    CHECK(d.counts.by_status[static_cast<int>(DecodeStatus::bad_protobuf)] > 1000);
    CHECK(d.counts.by_status[static_cast<int>(DecodeStatus::not_message)] > 10);
    CHECK(d.counts.by_status[static_cast<int>(DecodeStatus::dns_error)] > 10);
}

TEST_CASE("hand-written decode equals the protobuf decode on wire-format edge cases",
          "[decode][differential]") {
    Differ d;
    // A minimal valid frame: type MESSAGE, Message{type CLIENT_QUERY}.
    const Frame head = {0x78, 0x01};
    auto with_message = [&](const Frame& inner) {
        Frame g = head;
        put_tag(g, 14, 2);
        put_varint(g, inner.size());
        return cat(g, inner);
    };
    const Frame type_cq = {0x08, 0x05};
    CHECK(d.same(with_message(type_cq)));
    CHECK(d.same({}));
    CHECK(d.same(head));
    CHECK(d.same(with_message({})));
    // Tag 0, field number 0 with every wire type, end-group, wire types 6 and 7.
    for (std::uint8_t t = 0; t < 8; ++t) {
        CHECK(d.same(cat(head, {t, 0, 0, 0, 0, 0, 0, 0, 0})));
        CHECK(d.same(with_message(cat(type_cq, {t, 0, 0, 0, 0, 0, 0, 0, 0}))));
        CHECK(d.same(cat(head, {static_cast<std::uint8_t>(0x20 | t), 0, 0, 0, 0, 0, 0, 0, 0})));
        CHECK(d.same(with_message(cat(type_cq, {static_cast<std::uint8_t>(0x20 | t), 1, 0, 0, 0, 0, 0, 0, 0}))));
    }
    // Tags of 5 bytes and more: the value modulo 2^32, and 6 bytes rejected.
    CHECK(d.same(cat(head, {0xf8, 0x80, 0x80, 0x80, 0x00, 0x01})));  // field 15 in 5 bytes
    CHECK(d.same(cat(head, {0xf8, 0x80, 0x80, 0x80, 0x10, 0x01})));  // + 2^32
    CHECK(d.same(cat(head, {0xf8, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01})));
    CHECK(d.same(cat(head, {0x80, 0x80, 0x80, 0x80, 0x10, 0x01})));  // 2^32: tag 0
    CHECK(d.same(cat(head, {0xf8, 0xff, 0xff, 0xff, 0x0f, 0x01})));  // field 2^29-1
    CHECK(d.same(cat(head, {0xf8, 0xff, 0xff, 0xff, 0x7f, 0x01})));
    // Varints of 10 and 11 bytes; a 10th byte above 1.
    CHECK(d.same(with_message(cat(type_cq, {0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}))));
    CHECK(d.same(with_message(cat(type_cq, {0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}))));
    CHECK(d.same(with_message(cat(type_cq, {0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00}))));
    CHECK(d.same(with_message(cat(type_cq, {0x08, 0x85, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}))));
    // Lengths: non-canonical, of 5 bytes, 6 bytes, past the end, 2^31.
    CHECK(d.same(cat(head, {0x0a, 0x82, 0x80, 0x80, 0x80, 0x00, 'a', 'b'})));
    CHECK(d.same(cat(head, {0x0a, 0x82, 0x80, 0x80, 0x80, 0x80, 0x00, 'a', 'b'})));
    CHECK(d.same(cat(head, {0x0a, 0x82, 0x80, 0x80, 0x80, 0x08, 'a', 'b'})));
    CHECK(d.same(cat(head, {0x0a, 0x03, 'a', 'b'})));
    CHECK(d.same(cat(head, {0x0a, 0x80, 0x80, 0x80, 0x80, 0x08})));
    // Known field numbers with another wire type: unknown fields.
    CHECK(d.same(cat(head, {0x08, 0x05, 0x0d, 1, 2, 3, 4, 0x71, 1, 2, 3, 4, 5, 6, 7, 8})));
    CHECK(d.same(with_message(cat(type_cq, {0x0a, 0x01, 0x05, 0x22 ^ 0x07, 0x00}))));
    CHECK(d.same(with_message(cat(type_cq, {0x4d ^ 0x05, 0x01, 0x4d, 1, 2, 3, 4, 0x40, 0x01}))));
    // Groups: well-formed, mismatched end, unterminated, end-group alone, nested to the limit.
    CHECK(d.same(cat(head, {0x2b, 0x08, 0x01, 0x2c})));
    CHECK(d.same(cat(head, {0x2b, 0x08, 0x01, 0x34})));
    CHECK(d.same(cat(head, {0x2b, 0x08, 0x01})));
    CHECK(d.same(cat(head, {0x2c})));
    CHECK(d.same(with_message(cat(type_cq, {0x2b, 0x2c}))));
    CHECK(d.same(with_message(cat(type_cq, {0x2b, 0x00, 0x2c}))));
    for (const int levels : {98, 99, 100, 101, 102}) {
        Frame open, close;
        for (int i = 0; i < levels; ++i) {
            open.push_back(0x2b);
            close.push_back(0x2c);
        }
        CHECK(d.same(cat(cat(head, open), close)));
        CHECK(d.same(with_message(cat(cat(type_cq, open), close))));
    }
    // Message twice: merged (the second type wins, the first's other fields stay).
    const Frame two = cat(with_message(cat(type_cq, {0x30, 0x35})), with_message({0x08, 0x06, 0x38, 0x35}));
    CHECK(d.same(two));
    // Required Message.type only in the second occurrence.
    CHECK(d.same(cat(with_message({0x30, 0x35}), with_message({0x08, 0x06}))));
    CHECK(d.same(with_message({0x30, 0x35})));
    // Policy twice, merged; policy empty; malformed policy.
    CHECK(d.same(with_message(cat(type_cq, {0x7a, 0x02, 0x18, 0x01, 0x7a, 0x02, 0x20, 0x02}))));
    CHECK(d.same(with_message(cat(type_cq, {0x7a, 0x00}))));
    CHECK(d.same(with_message(cat(type_cq, {0x7a, 0x02, 0x18, 0x81}))));
    CHECK(d.same(with_message(cat(type_cq, {0x7a, 0x02, 0x00, 0x00}))));
    CHECK(d.same(with_message(cat(type_cq, {0x7a, 0x02, 0x18, 0x07, 0x7a, 0x02, 0x18, 0x03}))));
    // Message whose length runs past the frame, or stops inside a field.
    {
        Frame g = head;
        g.insert(g.end(), {0x72, 0x05, 0x08, 0x05});
        CHECK(d.same(g));
        Frame h = head;
        h.insert(h.end(), {0x72, 0x03, 0x08, 0x05, 0x30, 0x35});
        CHECK(d.same(h));
    }
}
