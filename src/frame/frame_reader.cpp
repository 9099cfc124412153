#include "dnstap_collector/frame.hpp"

#include <fstrm.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>

namespace dnstap_collector {
namespace {

struct ControlDeleter {
    void operator()(fstrm_control* c) const noexcept { fstrm_control_destroy(&c); }
};
using Control = std::unique_ptr<fstrm_control, ControlDeleter>;

Control make_control() {
    Control c(fstrm_control_init());
    if (!c) throw std::bad_alloc();
    return c;
}

std::uint32_t load_be32(const std::uint8_t* p) noexcept {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
           std::uint32_t{p[3]};
}

void store_be32(std::vector<std::uint8_t>& out, std::uint32_t v) {
    const std::uint8_t b[4] = {static_cast<std::uint8_t>(v >> 24), static_cast<std::uint8_t>(v >> 16),
                               static_cast<std::uint8_t>(v >> 8), static_cast<std::uint8_t>(v)};
    out.insert(out.end(), b, b + 4);
}

bool is_known_control(std::uint32_t type) noexcept {
    return type >= static_cast<std::uint32_t>(ControlType::accept) &&
           type <= static_cast<std::uint32_t>(ControlType::finish);
}

class FrameCategory final : public std::error_category {
public:
    const char* name() const noexcept override { return "frame_stream"; }
    std::string message(int ev) const override {
        switch (static_cast<FrameError>(ev)) {
        case FrameError::control_too_large: return "control frame longer than 512 bytes";
        case FrameError::control_malformed: return "malformed control frame";
        case FrameError::unexpected_control: return "control frame not valid in this state of the handshake";
        case FrameError::content_type_mismatch:
            return "sender does not offer content type " + std::string(dnstap_content_type);
        case FrameError::data_before_start: return "data frame outside START ... STOP";
        }
        return "unknown frame stream error";
    }
};

constexpr std::size_t header_size = 4;          // frame length
constexpr std::size_t control_header_size = 8;  // escape + control frame length

}  // namespace

const std::error_category& frame_category() noexcept {
    static const FrameCategory category;
    return category;
}

std::error_code make_error_code(FrameError e) noexcept { return {static_cast<int>(e), frame_category()}; }

FrameReader::FrameReader(std::size_t max_data_frame) : max_data_frame_(max_data_frame) {}

void FrameReader::compact() {
    if (begin_ == end_) {
        begin_ = end_ = 0;
    } else if (begin_ > 0) {
        std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
    }
}

std::span<std::uint8_t> FrameReader::prepare(std::size_t min_size) {
    // Moving the tail costs at most what was consumed, so compaction stays amortized O(1).
    if (begin_ == end_ || begin_ > buf_.size() / 2) compact();

    // Leave room for the whole frame being assembled so one read can complete it.
    std::size_t want = min_size;
    const std::size_t avail = end_ - begin_;
    if (skip_remaining_ == 0 && avail >= header_size) {
        const std::uint32_t len = load_be32(buf_.data() + begin_);
        std::size_t frame = 0;
        if (len != 0 && len <= max_data_frame_) frame = header_size + len;
        else if (len == 0 && avail >= control_header_size)
            frame = control_header_size + std::min<std::size_t>(load_be32(buf_.data() + begin_ + 4), max_control_frame);
        if (frame > avail) want = std::max(want, frame - avail);
    }
    if (buf_.size() - end_ < want) {
        if (begin_ > 0) compact();
        if (buf_.size() - end_ < want) buf_.resize(std::max(buf_.size() * 2, end_ + want));
    }
    return {buf_.data() + end_, buf_.size() - end_};
}

void FrameReader::commit(std::size_t n) { end_ += std::min(n, buf_.size() - end_); }

void FrameReader::append(std::span<const std::uint8_t> bytes) {
    // Nothing to copy; memcpy with the null data() of an empty span (and of a never-grown
    // buffer) would be undefined behaviour even for 0 bytes.
    if (bytes.empty()) return;
    auto space = prepare(bytes.size());
    std::memcpy(space.data(), bytes.data(), bytes.size());
    commit(bytes.size());
}

std::size_t FrameReader::pending_bytes() const noexcept { return end_ - begin_; }

FrameReader::Result FrameReader::fail(std::error_code& ec, FrameError e) {
    state_ = State::failed;
    error_ = make_error_code(e);
    ec = error_;
    return Result::error;
}

FrameReader::Result FrameReader::next(FrameEvent& out, std::error_code& ec) {
    if (state_ == State::failed) {
        ec = error_;
        return Result::error;
    }
    for (;;) {
        if (skip_remaining_ > 0) {
            const std::size_t n = std::min(skip_remaining_, end_ - begin_);
            begin_ += n;
            skip_remaining_ -= n;
            if (skip_remaining_ > 0) return Result::need_more;
        }
        const std::size_t avail = end_ - begin_;
        if (avail < header_size) return Result::need_more;
        const std::uint8_t* p = buf_.data() + begin_;
        const std::uint32_t len = load_be32(p);

        if (len != 0) {
            if (state_ != State::data) return fail(ec, FrameError::data_before_start);
            if (len > max_data_frame_) {
                // Discard as it streams in: an attacker's 4 GiB prefix must not cost 4 GiB.
                begin_ += header_size;
                skip_remaining_ = len;
                const std::size_t n = std::min(skip_remaining_, end_ - begin_);
                begin_ += n;
                skip_remaining_ -= n;
                out.kind = FrameEvent::Kind::oversized;
                out.data = {};
                out.content_types.clear();
                out.length = len;
                return Result::event;
            }
            if (avail < header_size + len) return Result::need_more;
            out.kind = FrameEvent::Kind::data;
            out.data = {p + header_size, len};
            out.content_types.clear();
            out.length = len;
            begin_ += header_size + len;
            return Result::event;
        }

        // Control frame: escape, length, then the frame itself.
        if (avail < control_header_size) return Result::need_more;
        const std::uint32_t clen = load_be32(p + 4);
        if (clen > max_control_frame) return fail(ec, FrameError::control_too_large);
        if (clen < 4) return fail(ec, FrameError::control_malformed);
        const std::size_t total = control_header_size + clen;
        if (avail < total) return Result::need_more;

        // libfstrm rejects unknown types outright; the spec lets a receiver skip them mid-stream.
        if (!is_known_control(load_be32(p + control_header_size))) {
            if (state_ != State::data) return fail(ec, FrameError::unexpected_control);
            begin_ += total;
            continue;
        }

        Control control = make_control();
        fstrm_control_type type{};
        if (fstrm_control_decode(control.get(), p, total, FSTRM_CONTROL_FLAG_WITH_HEADER) != fstrm_res_success ||
            fstrm_control_get_type(control.get(), &type) != fstrm_res_success)
            return fail(ec, FrameError::control_malformed);

        out.data = {};
        out.length = total;
        out.content_types.clear();
        std::size_t n_types = 0;
        fstrm_control_get_num_field_content_type(control.get(), &n_types);
        for (std::size_t i = 0; i < n_types; ++i) {
            const std::uint8_t* ct = nullptr;
            std::size_t ct_len = 0;
            if (fstrm_control_get_field_content_type(control.get(), i, &ct, &ct_len) == fstrm_res_success)
                out.content_types.emplace_back(reinterpret_cast<const char*>(ct), ct_len);
        }
        // An absent content type matches anything (spec and libfstrm agree).
        const bool matches =
            fstrm_control_match_field_content_type(control.get(),
                                                   reinterpret_cast<const std::uint8_t*>(dnstap_content_type.data()),
                                                   dnstap_content_type.size()) == fstrm_res_success;

        switch (state_) {
        case State::handshake:
            if (type == FSTRM_CONTROL_READY && !bidirectional_) {
                if (!matches) return fail(ec, FrameError::content_type_mismatch);
                bidirectional_ = true;
                out.kind = FrameEvent::Kind::ready;
            } else if (type == FSTRM_CONTROL_START) {
                if (!matches) return fail(ec, FrameError::content_type_mismatch);
                state_ = State::data;
                out.kind = FrameEvent::Kind::start;
            } else {
                return fail(ec, FrameError::unexpected_control);
            }
            break;
        case State::data:
            if (type != FSTRM_CONTROL_STOP) return fail(ec, FrameError::unexpected_control);
            state_ = State::stopped;
            out.kind = FrameEvent::Kind::stop;
            break;
        case State::stopped:
        case State::failed:
            return fail(ec, FrameError::unexpected_control);
        }
        begin_ += total;
        return Result::event;
    }
}

std::vector<std::uint8_t> encode_control(ControlType type, std::string_view content_type) {
    Control control = make_control();
    if (fstrm_control_set_type(control.get(), static_cast<fstrm_control_type>(type)) != fstrm_res_success)
        throw std::invalid_argument("encode_control: unknown control type");
    // STOP and FINISH carry no fields; libfstrm would drop one anyway.
    if (!content_type.empty() && type != ControlType::stop && type != ControlType::finish)
        fstrm_control_add_field_content_type(control.get(),
                                             reinterpret_cast<const std::uint8_t*>(content_type.data()),
                                             content_type.size());
    std::size_t size = 0;
    if (fstrm_control_encoded_size(control.get(), &size, FSTRM_CONTROL_FLAG_WITH_HEADER) != fstrm_res_success)
        throw std::invalid_argument("encode_control: content type too long");
    std::vector<std::uint8_t> out(size);
    if (fstrm_control_encode(control.get(), out.data(), &size, FSTRM_CONTROL_FLAG_WITH_HEADER) != fstrm_res_success)
        throw std::invalid_argument("encode_control: libfstrm could not encode the frame");
    out.resize(size);
    return out;
}

void append_data_frame(std::vector<std::uint8_t>& out, std::span<const std::uint8_t> payload) {
    // Length 0 is the control escape, and the prefix is 32 bits.
    if (payload.empty() || payload.size() > 0xFFFF'FFFFu)
        throw std::invalid_argument("append_data_frame: payload must be 1 byte .. 4 GiB");
    // No reserve(out.size() + ...) here: reserving exactly what one more frame needs defeats
    // the vector's geometric growth and makes appending many frames to one buffer quadratic.
    store_be32(out, static_cast<std::uint32_t>(payload.size()));
    out.insert(out.end(), payload.begin(), payload.end());
}

}  // namespace dnstap_collector
