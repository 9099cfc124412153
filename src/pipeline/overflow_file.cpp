#include "dnstap_collector/queue.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include "dnstap_collector/frame.hpp"
#include "dnstap_collector/log.hpp"

namespace dnstap_collector {

namespace {
[[noreturn]] void fail(const std::string& what, const std::filesystem::path& path) {
    throw std::system_error(errno, std::generic_category(), what + " " + path.string());
}
}  // namespace

OverflowFile::OverflowFile(std::filesystem::path path, std::uint64_t max_bytes)
    : path_(std::move(path)), max_bytes_(max_bytes), header_(encode_control(ControlType::start)) {
    try {
        open_or_take_up();
    } catch (...) {
        if (fd_ >= 0) ::close(fd_);
        if (offset_fd_ >= 0) ::close(offset_fd_);
        throw;
    }
}

void OverflowFile::open_or_take_up() {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd_ < 0) fail("cannot open overflow file", path_);
    const std::filesystem::path offset_path = path_.string() + ".read";
    offset_fd_ = ::open(offset_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (offset_fd_ < 0) fail("cannot open overflow file", offset_path);
    const off_t size = ::lseek(fd_, 0, SEEK_END);
    if (size < 0) fail("cannot size overflow file", path_);
    std::vector<std::uint8_t> head(header_.size());
    const bool has_header = static_cast<std::size_t>(size) >= header_.size() &&
                            ::pread(fd_, head.data(), head.size(), 0) == static_cast<ssize_t>(head.size()) &&
                            head == header_;
    if (has_header && static_cast<std::size_t>(size) > header_.size()) {
        // Left by a run that did not get to finish it: its frames come first.
        // Frames before the saved read position were handed to the workers already.
        std::uint64_t saved = 0;
        if (::pread(offset_fd_, &saved, sizeof saved, 0) != sizeof saved || saved < header_.size() ||
            saved > static_cast<std::uint64_t>(size))
            saved = header_.size();
        read_off_ = saved;
        write_off_ = static_cast<std::uint64_t>(size);
        const auto [frames, end] = count_frames();
        if (end < write_off_) {
            // A frame cut short by a crash: cut it off, so that what is appended follows whole frames.
            log::warning("overflow file " + path_.string() + ": " + std::to_string(write_off_ - end) +
                         " bytes of an unfinished frame at its end skipped");
            if (::ftruncate(fd_, static_cast<off_t>(end)) != 0) fail("cannot truncate overflow file", path_);
            write_off_ = end;
        }
        restart_reader(saved);
        restored_frames_ = frames;
        if (frames) log::warning("overflow file " + path_.string() + " holds " + std::to_string(restored_frames_) +
                     " frames from an earlier run: processing them first");
        return;
    }
    if (size > 0 && !has_header) log::warning("overflow file " + path_.string() + " is not ours: emptied");
    reset();
}

OverflowFile::~OverflowFile() {
    if (fd_ >= 0) ::close(fd_);
    if (offset_fd_ >= 0) ::close(offset_fd_);
}

void OverflowFile::save_read_offset() noexcept {
    // Not synced: after a crash of the machine the worst is frames handed out twice.
    if (::pwrite(offset_fd_, &read_off_, sizeof read_off_, 0) != sizeof read_off_) {
        // Left as is: a stale offset means frames handed out twice after a restart.
    }
}

bool OverflowFile::feed_chunk(FrameReader& reader, std::uint64_t& fed, std::uint64_t upto) const {
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(upto - fed, chunk_bytes));
    const auto space = reader.prepare(want);
    ssize_t got;
    errno = 0;
    do got = ::pread(fd_, space.data(), want, static_cast<off_t>(fed));
    while (got < 0 && errno == EINTR);
    if (got <= 0) return false;
    reader.commit(static_cast<std::size_t>(got));
    fed += static_cast<std::uint64_t>(got);
    return true;
}

FrameReader OverflowFile::started_reader() const {
    // The reader wants the START frame first; the file's own is skipped by starting past it.
    FrameReader reader(max_frame);
    reader.append(header_);
    FrameEvent ev;
    std::error_code ec;
    reader.next(ev, ec);
    return reader;
}

std::pair<std::uint64_t, std::uint64_t> OverflowFile::count_frames() const {
    FrameReader reader = started_reader();
    std::uint64_t fed = read_off_, frames = 0;
    FrameEvent ev;
    std::error_code ec;
    while (fed < write_off_ && feed_chunk(reader, fed, write_off_)) {
        FrameReader::Result r;
        while ((r = reader.next(ev, ec)) == FrameReader::Result::event)
            if (ev.kind == FrameEvent::Kind::data) ++frames;
        if (r == FrameReader::Result::error) break;
    }
    return {frames, fed - reader.pending_bytes()};
}

void OverflowFile::reset() {
    if (::ftruncate(fd_, 0) != 0) fail("cannot truncate overflow file", path_);
    if (::pwrite(fd_, header_.data(), header_.size(), 0) != static_cast<ssize_t>(header_.size()))
        fail("cannot write overflow file", path_);
    write_off_ = header_.size();
    restart_reader(header_.size());
    save_read_offset();
}

std::size_t OverflowFile::append(const FrameBatch& batch, std::size_t first) {
    scratch_.clear();
    std::size_t n = 0;
    std::uint64_t size = write_off_;
    for (std::size_t i = first; i < batch.frames(); ++i) {
        const auto frame = batch.frame(i);
        if (frame.empty()) continue;  // a zero length would read back as a control frame
        if (size + 4 + frame.size() > max_bytes_ + header_.size()) break;
        append_data_frame(scratch_, frame);
        size += 4 + frame.size();
        ++n;
    }
    std::size_t done = 0;
    while (done < scratch_.size()) {
        const ssize_t w = ::pwrite(fd_, scratch_.data() + done, scratch_.size() - done,
                                   static_cast<off_t>(write_off_ + done));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            std::uint64_t suppressed = 0;
            if (write_log_.allow(suppressed))
                log::warning("cannot write overflow file " + path_.string() + ": " + std::strerror(errno) + " (" +
                             std::to_string(suppressed) + " more failures since the last report)");
            // Whatever part was written is past write_off_ and will be overwritten.
            return 0;
        }
        done += static_cast<std::size_t>(w);
    }
    write_off_ += scratch_.size();
    return n;
}

std::size_t OverflowFile::read(FrameBatch& out, std::uint64_t upto, std::size_t max_bytes) {
    const std::size_t n = read_frames(out, upto, max_bytes);
    if (n) save_read_offset();
    return n;
}

void OverflowFile::restart_reader(std::uint64_t at) {
    reader_ = started_reader();
    fed_off_ = read_off_ = at;
}

std::size_t OverflowFile::read_frames(FrameBatch& out, std::uint64_t upto, std::size_t max_bytes) {
    // Whole chunks through the Frame Streams reader (a pread per frame would cost two system
    // calls per frame); read_off_ trails what was fed by what the reader holds unconsumed.
    std::size_t n = 0;
    FrameEvent ev;
    std::error_code ec;
    for (;;) {
        while (out.bytes.size() < max_bytes) {
            const auto r = reader_.next(ev, ec);
            if (r == FrameReader::Result::need_more) break;
            if (r == FrameReader::Result::error) {
                skip_rest(upto, ec.message());
                return n;
            }
            if (ev.kind == FrameEvent::Kind::data) {
                out.add(ev.data);
                ++n;
            } else if (ev.kind == FrameEvent::Kind::oversized) {
                log::warning("overflow file " + path_.string() + ": a frame length of " + std::to_string(ev.length) +
                             " bytes (damage): skipped");
            }
        }
        read_off_ = fed_off_ - reader_.pending_bytes();
        if (out.bytes.size() >= max_bytes) return n;
        if (fed_off_ >= upto) {
            // Only whole frames are appended (and a file taken up is cut after its last):
            // anything left over is damage.
            if (read_off_ < upto) skip_rest(upto, "a frame length runs past the end");
            return n;
        }
        if (!feed_chunk(reader_, fed_off_, upto)) {
            skip_rest(upto, errno ? std::strerror(errno) : "the file is shorter than expected");
            return n;
        }
    }
}

void OverflowFile::skip_rest(std::uint64_t upto, const std::string& why) {
    log::warning("overflow file " + path_.string() + ": " + why + "; " + std::to_string(upto - read_off_) +
                 " bytes skipped");
    restart_reader(upto);
    save_read_offset();
}

}  // namespace dnstap_collector
