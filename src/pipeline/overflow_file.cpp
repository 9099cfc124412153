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
std::uint32_t read_be32(const std::uint8_t* p) noexcept {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

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

std::pair<std::uint64_t, std::uint64_t> OverflowFile::count_frames() const {
    std::uint64_t frames = 0, off = read_off_;
    std::uint8_t len[4];
    while (off + 4 <= write_off_ && ::pread(fd_, len, 4, static_cast<off_t>(off)) == 4) {
        const std::uint32_t n = read_be32(len);
        if (n == 0 || off + 4 + n > write_off_) break;
        off += 4 + n;
        ++frames;
    }
    return {frames, off};
}

void OverflowFile::reset() {
    if (::ftruncate(fd_, 0) != 0) fail("cannot truncate overflow file", path_);
    if (::pwrite(fd_, header_.data(), header_.size(), 0) != static_cast<ssize_t>(header_.size()))
        fail("cannot write overflow file", path_);
    read_off_ = write_off_ = header_.size();
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
    // Whole chunks, parsed here: a pread per frame would cost two system calls per frame.
    std::size_t n = 0;
    while (read_off_ < upto && out.bytes.size() < max_bytes) {
        const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(upto - read_off_, chunk_bytes));
        chunk_.resize(want);
        const ssize_t got = ::pread(fd_, chunk_.data(), want, static_cast<off_t>(read_off_));
        if (got < 4) {
            if (got < 0 && errno == EINTR) continue;
            skip_rest(upto, got < 0 ? std::strerror(errno) : "the file is shorter than expected");
            break;
        }
        std::size_t at = 0;
        while (at + 4 <= static_cast<std::size_t>(got) && out.bytes.size() < max_bytes) {
            const std::uint32_t size = read_be32(chunk_.data() + at);
            if (size == 0 || read_off_ + at + 4 + size > upto) {
                // Whole frames only are appended (and a file taken up is cut after its last).
                read_off_ += at;
                skip_rest(upto, "a frame length runs past the end");
                return n;
            }
            if (at + 4 + size > static_cast<std::size_t>(got)) {
                if (at > 0) break;  // the frame starts the next chunk
                // Larger than a chunk: read it on its own.
                const std::size_t begin = out.bytes.size();
                out.bytes.resize(begin + size);
                if (::pread(fd_, out.bytes.data() + begin, size, static_cast<off_t>(read_off_ + 4)) !=
                    static_cast<ssize_t>(size)) {
                    out.bytes.resize(begin);
                    skip_rest(upto, std::strerror(errno));
                    return n;
                }
                out.ends.push_back(static_cast<std::uint32_t>(out.bytes.size()));
                at = 4 + size;
                ++n;
                break;
            }
            out.add({chunk_.data() + at + 4, size});
            at += 4 + size;
            ++n;
        }
        read_off_ += at;
    }
    if (n) save_read_offset();
    return n;
}

void OverflowFile::skip_rest(std::uint64_t upto, const std::string& why) {
    log::warning("overflow file " + path_.string() + ": " + why + "; " + std::to_string(upto - read_off_) +
                 " bytes skipped");
    read_off_ = upto;
    save_read_offset();
}

}  // namespace dnstap_collector
