#include "ingest/socket_setup.hpp"

#include <arpa/inet.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <stdexcept>

#include "dnstap_collector/log.hpp"

namespace dnstap_collector::ingest_detail {
namespace {

std::runtime_error failure(const std::string& what, int err) {
    return std::runtime_error(what + ": " + std::strerror(err));
}

sockaddr_un unix_address(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path)
        throw std::runtime_error("socket path '" + path + "' is empty or longer than " +
                                 std::to_string(sizeof addr.sun_path - 1) + " bytes");
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    return addr;
}

const sockaddr* as_sockaddr(const sockaddr_un& a) noexcept { return reinterpret_cast<const sockaddr*>(&a); }

std::optional<gid_t> lookup_group(const std::string& name) {
    group grp{};
    group* result = nullptr;
    std::vector<char> buf(16 * 1024);
    int err = 0;
    while ((err = getgrnam_r(name.c_str(), &grp, buf.data(), buf.size(), &result)) == ERANGE)
        buf.resize(buf.size() * 2);
    if (err != 0) throw failure("looking up group " + name, err);
    if (!result) return std::nullopt;
    return result->gr_gid;
}

// A socket file nobody accepts on is left over from a crash; one that answers belongs to a
// running collector (or anything else) and must not be stolen.
void check_existing(const std::string& path, const sockaddr_un& addr) {
    struct stat st{};
    if (::lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return;
        throw failure("socket " + path, errno);
    }
    if (!S_ISSOCK(st.st_mode)) throw std::runtime_error("socket " + path + " exists and is not a socket");
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe.get() < 0) throw failure("socket()", errno);
    if (::connect(probe.get(), as_sockaddr(addr), sizeof addr) == 0)
        throw std::runtime_error("socket " + path + " is in use by a running process");
    if (errno != ECONNREFUSED) throw failure("socket " + path + ": cannot tell whether it is in use", errno);
    log::info("replacing stale socket " + path);
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = o.release();
    }
    return *this;
}

UniqueFd::~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
}

UnixSocketFile create_unix_socket(const UnixListenerOptions& options, int backlog) {
    const std::string& path = options.path;
    const sockaddr_un final_addr = unix_address(path);
    check_existing(path, final_addr);

    std::optional<gid_t> gid;
    if (!options.group.empty()) {
        gid = lookup_group(options.group);
        if (!gid) throw std::runtime_error("socket " + path + ": unknown group " + options.group);
    } else {
        gid = lookup_group("bind");  // named's group on Debian; absent elsewhere is fine
    }

    // Bind under a temporary name in the same directory, give it its final mode and group,
    // then rename() it into place: the public name never exists with a looser mode. fchmod()
    // before bind() sets the mode the kernel creates the file with, without touching the
    // process-wide umask (other threads create files too).
    std::string tmp = path + ".tmp." + std::to_string(::getpid());
    if (tmp.size() >= sizeof final_addr.sun_path) tmp = path;  // no room: rely on fchmod() alone
    const sockaddr_un tmp_addr = unix_address(tmp);
    ::unlink(tmp.c_str());  // a leftover temporary, or the stale socket found above

    UnixSocketFile out;
    out.fd = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (out.fd.get() < 0) throw failure("socket()", errno);
    if (::fchmod(out.fd.get(), 0600) != 0) throw failure("fchmod on socket " + path, errno);
    if (::bind(out.fd.get(), as_sockaddr(tmp_addr), sizeof tmp_addr) != 0) throw failure("bind " + tmp, errno);
    try {
        if (gid && ::chown(tmp.c_str(), static_cast<uid_t>(-1), *gid) != 0) {
            // The default group is best effort (an unprivileged run cannot give it away).
            if (!options.group.empty()) throw failure("chown socket " + path + " to group " + options.group, errno);
            log::warning("socket " + path + ": cannot give it to group bind: " + std::strerror(errno));
        }
        if (::chmod(tmp.c_str(), static_cast<mode_t>(options.mode)) != 0) throw failure("chmod socket " + path, errno);
        if (::listen(out.fd.get(), backlog) != 0) throw failure("listen on " + path, errno);
        if (tmp != path && ::rename(tmp.c_str(), path.c_str()) != 0)
            throw failure("rename " + tmp + " to " + path, errno);
    } catch (...) {
        ::unlink(tmp.c_str());
        throw;
    }
    struct stat st{};
    if (::stat(path.c_str(), &st) == 0) {
        out.dev = st.st_dev;
        out.ino = st.st_ino;
    }
    return out;
}

void remove_unix_socket(const std::string& path, dev_t dev, ino_t ino) noexcept {
    struct stat st{};
    if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev && st.st_ino == ino)
        ::unlink(path.c_str());
}

bool Cidr::contains(int addr_family, const std::uint8_t* addr) const noexcept {
    if (addr_family != family) return false;
    const unsigned full = prefix / 8, rest = prefix % 8;
    if (std::memcmp(addr, bytes.data(), full) != 0) return false;
    if (rest == 0) return true;
    const auto mask = static_cast<std::uint8_t>(0xFF << (8 - rest));
    return (addr[full] & mask) == bytes[full];
}

Cidr parse_cidr(const std::string& text) {
    const auto bad = [&] { return std::runtime_error("invalid tcp_allow entry '" + text + "' (want ADDRESS[/PREFIX])"); };
    const auto slash = text.find('/');
    const std::string address = text.substr(0, slash);
    Cidr c;
    unsigned max_prefix = 0;
    if (::inet_pton(AF_INET, address.c_str(), c.bytes.data()) == 1) {
        c.family = AF_INET;
        max_prefix = 32;
    } else if (::inet_pton(AF_INET6, address.c_str(), c.bytes.data()) == 1) {
        c.family = AF_INET6;
        max_prefix = 128;
    } else {
        throw bad();
    }
    c.prefix = max_prefix;
    if (slash != std::string::npos) {
        const std::string digits = text.substr(slash + 1);
        if (digits.empty() || digits.size() > 3 || digits.find_first_not_of("0123456789") != std::string::npos)
            throw bad();
        c.prefix = static_cast<unsigned>(std::stoul(digits));
        if (c.prefix > max_prefix) throw bad();
    }
    for (unsigned bit = c.prefix; bit < max_prefix; ++bit)
        c.bytes[bit / 8] &= static_cast<std::uint8_t>(~(0x80u >> (bit % 8)));
    return c;
}

std::vector<Cidr> parse_cidrs(const std::vector<std::string>& texts) {
    std::vector<Cidr> out;
    out.reserve(texts.size());
    for (const auto& t : texts) out.push_back(parse_cidr(t));
    return out;
}

}  // namespace dnstap_collector::ingest_detail
