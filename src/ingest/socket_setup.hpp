// Blocking socket plumbing for Ingest that Asio does not cover: creating the Unix socket file
// safely (stale check, mode, group) and the TCP allow list. No Asio here.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "dnstap_collector/ingest.hpp"

namespace dnstap_collector::ingest_detail {

class UniqueFd {
public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
    UniqueFd& operator=(UniqueFd&& o) noexcept;
    ~UniqueFd();
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    int get() const noexcept { return fd_; }
    int release() noexcept {
        const int fd = fd_;
        fd_ = -1;
        return fd;
    }

private:
    int fd_ = -1;
};

struct UnixSocketFile {
    UniqueFd fd;  // bound and listening
    dev_t dev = 0;
    ino_t ino = 0;
};

// Binds and listens on options.path. A stale socket file (nobody accepts on it) is replaced; a
// live one, or a file that is not a socket, is an error. The file is never accessible beyond
// its owner until it has its final mode and group. Throws std::runtime_error naming the path.
UnixSocketFile create_unix_socket(const UnixListenerOptions& options, int backlog);

// Unlinks `path` only if it is still the socket we created (a successor may have replaced it).
void remove_unix_socket(const std::string& path, dev_t dev, ino_t ino) noexcept;

struct Cidr {
    int family = 0;                      // AF_INET or AF_INET6
    std::array<std::uint8_t, 16> bytes{};  // network order, host bits cleared
    unsigned prefix = 0;
    bool contains(int addr_family, const std::uint8_t* addr) const noexcept;
};

// "10.0.0.0/8", "2001:db8::/32", or a bare address (a host). Throws std::runtime_error.
Cidr parse_cidr(const std::string& text);
std::vector<Cidr> parse_cidrs(const std::vector<std::string>& texts);

}  // namespace dnstap_collector::ingest_detail
