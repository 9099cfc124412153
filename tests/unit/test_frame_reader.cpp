// FrameReader against hand-built byte streams (in the style of fstrm's t/test_control.c):
// the bytes are spelled out here rather than produced by the encoder under test.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "dnstap_collector/frame.hpp"

using namespace dnstap_collector;

namespace {

using Bytes = std::vector<std::uint8_t>;

void put32(Bytes& b, std::uint32_t v) {
    b.push_back(static_cast<std::uint8_t>(v >> 24));
    b.push_back(static_cast<std::uint8_t>(v >> 16));
    b.push_back(static_cast<std::uint8_t>(v >> 8));
    b.push_back(static_cast<std::uint8_t>(v));
}

Bytes control(std::uint32_t type, const std::vector<std::string>& content_types = {}) {
    Bytes body;
    put32(body, type);
    for (const auto& ct : content_types) {
        put32(body, 1);  // content type field
        put32(body, static_cast<std::uint32_t>(ct.size()));
        body.insert(body.end(), ct.begin(), ct.end());
    }
    Bytes b;
    put32(b, 0);  // escape
    put32(b, static_cast<std::uint32_t>(body.size()));
    b.insert(b.end(), body.begin(), body.end());
    return b;
}

Bytes data(const std::string& payload) {
    Bytes b;
    put32(b, static_cast<std::uint32_t>(payload.size()));
    b.insert(b.end(), payload.begin(), payload.end());
    return b;
}

Bytes cat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

const std::string dnstap{dnstap_content_type};
const Bytes ready = control(4, {dnstap});
const Bytes start = control(2, {dnstap});
const Bytes stop = control(3);

struct Ev {
    FrameEvent::Kind kind;
    std::string data;
    std::vector<std::string> content_types;
    std::size_t length;
    bool operator==(const Ev&) const = default;
};

struct Outcome {
    std::vector<Ev> events;
    std::error_code error;  // empty: ended with need_more
};

// Feeds `bytes` in chunks of `chunk` bytes, draining events after each chunk.
Outcome feed(FrameReader& reader, const Bytes& bytes, std::size_t chunk = SIZE_MAX) {
    Outcome o;
    FrameEvent ev;
    for (std::size_t off = 0; off < bytes.size();) {
        const std::size_t n = std::min(chunk, bytes.size() - off);
        reader.append({bytes.data() + off, n});
        off += n;
        for (;;) {
            std::error_code ec;
            const auto r = reader.next(ev, ec);
            if (r == FrameReader::Result::need_more) break;
            if (r == FrameReader::Result::error) {
                o.error = ec;
                return o;
            }
            o.events.push_back({ev.kind, std::string(ev.data.begin(), ev.data.end()), ev.content_types,
                                ev.kind == FrameEvent::Kind::oversized ? ev.length : 0});
        }
    }
    return o;
}

Outcome feed(const Bytes& bytes, std::size_t chunk = SIZE_MAX, std::size_t max_frame = default_max_data_frame) {
    FrameReader reader(max_frame);
    return feed(reader, bytes, chunk);
}

using K = FrameEvent::Kind;

}  // namespace

TEST_CASE("bidirectional handshake yields ready, start, data and stop") {
    const auto o = feed(cat({ready, start, data("abc"), data("de"), stop}));
    REQUIRE_FALSE(o.error);
    const std::vector<Ev> expected{{K::ready, "", {dnstap}, 0},
                                   {K::start, "", {dnstap}, 0},
                                   {K::data, "abc", {}, 0},
                                   {K::data, "de", {}, 0},
                                   {K::stop, "", {}, 0}};
    CHECK(o.events == expected);

    FrameReader reader;
    feed(reader, cat({ready, start}));
    CHECK(reader.bidirectional());
    CHECK(reader.started());
}

TEST_CASE("unidirectional stream (START without READY) is accepted") {
    FrameReader reader;
    const auto o = feed(reader, cat({start, data("x"), stop}));
    REQUIRE_FALSE(o.error);
    REQUIRE(o.events.size() == 3);
    CHECK(o.events[0].kind == K::start);
    CHECK(o.events[1].data == "x");
    CHECK(o.events[2].kind == K::stop);
    CHECK_FALSE(reader.bidirectional());
}

TEST_CASE("START without a content type field is accepted") {
    const auto o = feed(cat({control(2), data("x")}));
    REQUIRE_FALSE(o.error);
    REQUIRE(o.events.size() == 2);
    CHECK(o.events[0].content_types.empty());
}

TEST_CASE("READY offering several content types is accepted when one is dnstap") {
    const auto o = feed(control(4, {"protobuf:other", dnstap}));
    REQUIRE_FALSE(o.error);
    REQUIRE(o.events.size() == 1);
    CHECK(o.events[0].content_types == std::vector<std::string>{"protobuf:other", dnstap});
}

TEST_CASE("control frame of exactly 512 bytes is accepted") {
    // 4 (type) + 8+22 + 8+256 + 8+206 = 512
    const auto frame = control(4, {dnstap, std::string(256, 'a'), std::string(206, 'b')});
    REQUIRE(frame.size() == 8 + 512);
    const auto o = feed(frame);
    REQUIRE_FALSE(o.error);
    CHECK(o.events.size() == 1);
}

TEST_CASE("invalid streams are rejected with the matching error") {
    struct Case {
        const char* name;
        Bytes bytes;
        FrameError error;
    };
    Bytes too_large_header;  // only the header: the verdict must not wait for 513 bytes
    put32(too_large_header, 0);
    put32(too_large_header, 513);
    Bytes too_short;
    put32(too_short, 0);
    put32(too_short, 2);
    too_short.push_back(0);
    too_short.push_back(0);
    Bytes bad_field = control(2);
    bad_field[7] += 8;
    put32(bad_field, 7);  // unknown field type
    put32(bad_field, 0);
    Bytes truncated_field = control(4, {dnstap});
    truncated_field[7] -= 1;  // content type claims one byte more than the frame holds
    truncated_field.pop_back();

    const std::vector<Case> cases{
        {"READY with a foreign content type", control(4, {"protobuf:other"}), FrameError::content_type_mismatch},
        {"START with a foreign content type", control(2, {"protobuf:other"}), FrameError::content_type_mismatch},
        {"START after READY with a foreign content type", cat({ready, control(2, {"x"})}),
         FrameError::content_type_mismatch},
        {"control frame of 513 bytes", control(4, {dnstap, std::string(256, 'a'), std::string(207, 'b')}),
         FrameError::control_too_large},
        {"control frame length of 513 (header only)", too_large_header, FrameError::control_too_large},
        {"control frame shorter than its type", too_short, FrameError::control_malformed},
        {"unknown field type", bad_field, FrameError::control_malformed},
        {"content type longer than the frame", truncated_field, FrameError::control_malformed},
        {"START with two content types", control(2, {dnstap, dnstap}), FrameError::control_malformed},
        {"data before START", data("abc"), FrameError::data_before_start},
        {"data after READY but before START", cat({ready, data("abc")}), FrameError::data_before_start},
        {"data after STOP", cat({start, stop, data("abc")}), FrameError::data_before_start},
        {"START twice", cat({start, start}), FrameError::unexpected_control},
        {"READY twice", cat({ready, ready}), FrameError::unexpected_control},
        {"READY after START", cat({start, ready}), FrameError::unexpected_control},
        {"ACCEPT sent to a receiver", control(1, {dnstap}), FrameError::unexpected_control},
        {"FINISH sent to a receiver", cat({start, control(5)}), FrameError::unexpected_control},
        {"STOP before START", stop, FrameError::unexpected_control},
        {"unknown control type during the handshake", control(99), FrameError::unexpected_control},
    };
    for (const auto& c : cases) {
        SECTION(c.name) {
            for (std::size_t chunk : {std::size_t{1}, std::size_t{3}, SIZE_MAX}) {
                INFO("chunk " << chunk);
                const auto o = feed(c.bytes, chunk);
                CHECK(o.error == make_error_code(c.error));
            }
        }
    }
}

TEST_CASE("errors are final: next() keeps returning the first error") {
    FrameReader reader;
    auto o = feed(reader, data("abc"));
    REQUIRE(o.error == make_error_code(FrameError::data_before_start));
    o = feed(reader, start);
    CHECK(o.error == make_error_code(FrameError::data_before_start));
}

TEST_CASE("unknown control type in the data phase is ignored") {
    const auto o = feed(cat({start, data("a"), control(42, {"whatever"}), data("b"), stop}));
    REQUIRE_FALSE(o.error);
    REQUIRE(o.events.size() == 4);
    CHECK(o.events[1].data == "a");
    CHECK(o.events[2].data == "b");
    CHECK(o.events[3].kind == K::stop);
}

TEST_CASE("oversized data frame is skipped and the following frame is still read") {
    const Bytes stream = cat({start, data(std::string(100, 'x')), data("next"), data(std::string(16, 'y')), stop});
    for (std::size_t chunk : {std::size_t{1}, std::size_t{7}, std::size_t{64}, SIZE_MAX}) {
        INFO("chunk " << chunk);
        const auto o = feed(stream, chunk, 16);
        REQUIRE_FALSE(o.error);
        const std::vector<Ev> expected{{K::start, "", {dnstap}, 0},
                                       {K::oversized, "", {}, 100},
                                       {K::data, "next", {}, 0},
                                       {K::data, std::string(16, 'y'), {}, 0},
                                       {K::stop, "", {}, 0}};
        CHECK(o.events == expected);
    }
}

TEST_CASE("a 0xFFFFFFFF length prefix is skipped without buffering it") {
    FrameReader reader;
    auto o = feed(reader, start);
    Bytes huge;
    put32(huge, 0xFFFF'FFFFu);
    huge.resize(huge.size() + 300'000, 0xAB);
    o = feed(reader, huge, 4096);
    REQUIRE_FALSE(o.error);
    REQUIRE(o.events.size() == 1);
    CHECK(o.events[0].kind == K::oversized);
    CHECK(o.events[0].length == 0xFFFF'FFFFu);
    // Skipped bytes are not "pending": EOF here is not a second drop for the same frame.
    CHECK(reader.pending_bytes() == 0);
    CHECK(reader.prepare(4096).size() < 4 * 1024 * 1024);
}

TEST_CASE("bytes fed one at a time give the same events as one block") {
    const Bytes stream = cat({ready, start, data("one"), control(77), data(std::string(5000, 'z')), data("3"), stop});
    const auto whole = feed(stream);
    const auto bytewise = feed(stream, 1);
    REQUIRE_FALSE(whole.error);
    REQUIRE_FALSE(bytewise.error);
    CHECK(whole.events.size() == 6);
    CHECK(bytewise.events == whole.events);
}

TEST_CASE("a partial frame at EOF shows as pending bytes") {
    FrameReader reader;
    Bytes stream = cat({start, data("complete")});
    const Bytes partial = data("cut short");
    stream.insert(stream.end(), partial.begin(), partial.begin() + 6);
    const auto o = feed(reader, stream);
    REQUIRE_FALSE(o.error);
    CHECK(o.events.size() == 2);
    CHECK(reader.pending_bytes() == 6);

    FrameReader clean;
    feed(clean, cat({start, data("complete"), stop}));
    CHECK(clean.pending_bytes() == 0);

    FrameReader half_header;  // 2 bytes of a length prefix are a partial frame too
    feed(half_header, cat({start, Bytes{0, 0}}));
    CHECK(half_header.pending_bytes() == 2);
}

TEST_CASE("a data frame of exactly max_data_frame is delivered") {
    const auto o = feed(cat({start, data(std::string(64, 'm')), data(std::string(65, 'n'))}), 10, 64);
    REQUIRE_FALSE(o.error);
    REQUIRE(o.events.size() == 3);
    CHECK(o.events[1].kind == K::data);
    CHECK(o.events[1].data.size() == 64);
    CHECK(o.events[2].kind == K::oversized);
}

TEST_CASE("buffer stays bounded and zero-copy reads work over a long stream") {
    FrameReader reader(4096);
    Bytes stream = start;
    for (int i = 0; i < 20'000; ++i) {
        const auto f = data(std::string(static_cast<std::size_t>(100 + i % 900), static_cast<char>('a' + i % 26)));
        stream.insert(stream.end(), f.begin(), f.end());
    }
    std::size_t off = 0, frames = 0, max_buffer = 0;
    FrameEvent ev;
    std::error_code ec;
    while (off < stream.size()) {
        auto space = reader.prepare(1000);
        max_buffer = std::max(max_buffer, space.size());
        const std::size_t n = std::min({space.size(), stream.size() - off, std::size_t{1500}});
        std::copy_n(stream.data() + off, n, space.data());
        reader.commit(n);
        off += n;
        FrameReader::Result r;
        while ((r = reader.next(ev, ec)) == FrameReader::Result::event)
            if (ev.kind == K::data) {
                const auto expect_size = static_cast<std::size_t>(100 + frames % 900);
                REQUIRE(ev.data.size() == expect_size);
                REQUIRE(ev.data[0] == 'a' + frames % 26);
                ++frames;
            }
        REQUIRE(r == FrameReader::Result::need_more);
    }
    CHECK(frames == 20'000);
    CHECK(reader.pending_bytes() == 0);
    CHECK(max_buffer < 64 * 1024);
}

TEST_CASE("encode_control produces the bytes of the spec") {
    CHECK(encode_control(ControlType::accept) == control(1, {dnstap}));
    CHECK(encode_control(ControlType::start) == control(2, {dnstap}));
    CHECK(encode_control(ControlType::stop) == control(3));
    CHECK(encode_control(ControlType::finish) == control(5));
    CHECK(encode_control(ControlType::ready, "") == control(4));
    CHECK_THROWS(encode_control(ControlType::start, std::string(257, 'x')));
}

TEST_CASE("append_data_frame writes a big-endian length and the payload") {
    Bytes out;
    const Bytes payload{1, 2, 3};
    append_data_frame(out, payload);
    CHECK(out == Bytes{0, 0, 0, 3, 1, 2, 3});
    CHECK_THROWS(append_data_frame(out, Bytes{}));
}

TEST_CASE("frame errors have readable messages") {
    const std::error_code ec = FrameError::control_too_large;
    CHECK(ec.category().name() == std::string("frame_stream"));
    CHECK(ec.message().find("512") != std::string::npos);
    CHECK(make_error_code(FrameError::content_type_mismatch).message().find(dnstap) != std::string::npos);
}
