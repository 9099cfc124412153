// Frame Streams codec: bytes in, events out. No I/O, so it is tested with bytes alone.
// Spec: https://farsightsec.github.io/fstrm/ (control frames are decoded and encoded with
// libfstrm's fstrm_control API).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace dnstap_collector {

inline constexpr std::string_view dnstap_content_type = "protobuf:dnstap.Dnstap";
// The spec caps control frames at 512 bytes; anything longer is an attack or a bug.
inline constexpr std::size_t max_control_frame = 512;
inline constexpr std::size_t default_max_data_frame = 1 << 20;

enum class FrameError {
    control_too_large = 1,   // control frame longer than 512 bytes
    control_malformed,       // libfstrm could not decode the control frame
    unexpected_control,      // e.g. START twice, ACCEPT sent to a receiver
    content_type_mismatch,   // READY/START without protobuf:dnstap.Dnstap
    data_before_start,       // data frame outside START ... STOP
};
const std::error_category& frame_category() noexcept;
std::error_code make_error_code(FrameError e) noexcept;

enum class ControlType : std::uint32_t { accept = 1, start = 2, stop = 3, ready = 4, finish = 5 };

struct FrameEvent {
    enum class Kind {
        ready,      // bidirectional sender said READY: answer with ACCEPT
        start,      // data phase begins
        data,       // one data frame, payload in `data`
        stop,       // sender is done: answer with FINISH (bidirectional) and close
        oversized,  // data frame above the limit, skipped without losing framing
    };
    Kind kind;
    std::span<const std::uint8_t> data;  // valid until the next call to next()
    std::vector<std::string> content_types;  // offered on READY/START
    std::size_t length = 0;  // frame length for `oversized`
};

// Incremental reader: append() bytes as they arrive, then call next() until it returns
// `need_more`. Data spans point into the reader's buffer and stay valid until the next
// prepare()/append()/next(). Errors are final for the connection: next() repeats them.
class FrameReader {
public:
    enum class Result { event, need_more, error };

    explicit FrameReader(std::size_t max_data_frame = default_max_data_frame);

    // Space to read into; call commit(n) after n bytes were written there.
    std::span<std::uint8_t> prepare(std::size_t min_size = 64 * 1024);
    void commit(std::size_t n);
    void append(std::span<const std::uint8_t> bytes);

    Result next(FrameEvent& out, std::error_code& ec);

    // Bytes of an unfinished frame still buffered (non-zero at EOF means a partial frame).
    std::size_t pending_bytes() const noexcept;
    bool started() const noexcept { return state_ == State::data; }
    bool bidirectional() const noexcept { return bidirectional_; }

private:
    enum class State { handshake, data, stopped, failed };
    Result fail(std::error_code& ec, FrameError e);
    void compact();

    std::vector<std::uint8_t> buf_;
    std::size_t begin_ = 0, end_ = 0;
    std::size_t skip_remaining_ = 0;  // bytes of an oversized frame still to discard
    std::size_t max_data_frame_;
    State state_ = State::handshake;
    bool bidirectional_ = false;
    std::error_code error_;  // the final error once state_ == failed
};

// Encoders for the frames a receiver or a file writer sends.
std::vector<std::uint8_t> encode_control(ControlType type, std::string_view content_type = dnstap_content_type);
void append_data_frame(std::vector<std::uint8_t>& out, std::span<const std::uint8_t> payload);

// Reads a Frame Streams file (as fstrm_capture and named write them), calling on_frame for
// each data frame. A file without STOP (writer still running or killed) is read to its end.
struct FrameFileResult {
    std::uint64_t frames = 0;
    std::uint64_t oversized = 0;
    bool complete = false;  // STOP seen
    std::string error;      // empty when the file read cleanly
};
FrameFileResult read_frame_file(const std::string& path,
                                const std::function<void(std::span<const std::uint8_t>)>& on_frame,
                                std::size_t max_data_frame = default_max_data_frame);

}  // namespace dnstap_collector

template <> struct std::is_error_code_enum<dnstap_collector::FrameError> : std::true_type {};
