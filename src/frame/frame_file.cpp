#include "dnstap_collector/frame.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace dnstap_collector {

namespace {
struct Fd {
    int fd;
    explicit Fd(int f) : fd(f) {}
    ~Fd() { if (fd >= 0) ::close(fd); }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
};
}  // namespace

FrameFileResult read_frame_file(const std::string& path, const std::function<void(std::span<const std::uint8_t>)>& on_frame,
                                std::size_t max_data_frame) {
    FrameFileResult result;
    Fd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (file.fd < 0) {
        result.error = path + ": " + std::strerror(errno);
        return result;
    }
    FrameReader reader(max_data_frame);
    FrameEvent event;
    for (;;) {
        auto space = reader.prepare(1 << 20);
        const ssize_t n = ::read(file.fd, space.data(), space.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            result.error = path + ": " + std::strerror(errno);
            return result;
        }
        if (n == 0) break;
        reader.commit(static_cast<std::size_t>(n));
        std::error_code ec;
        for (;;) {
            const auto r = reader.next(event, ec);
            if (r == FrameReader::Result::need_more) break;
            if (r == FrameReader::Result::error) {
                result.error = path + ": " + ec.message();
                return result;
            }
            switch (event.kind) {
            case FrameEvent::Kind::data: ++result.frames; on_frame(event.data); break;
            case FrameEvent::Kind::oversized: ++result.oversized; break;
            case FrameEvent::Kind::stop: result.complete = true; return result;
            case FrameEvent::Kind::ready:
            case FrameEvent::Kind::start: break;
            }
        }
    }
    if (reader.pending_bytes() > 0) result.error = path + ": file ends inside a frame (" +
                                                 std::to_string(reader.pending_bytes()) + " bytes)";
    return result;
}

}  // namespace dnstap_collector
