#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "dnstap_collector/log.hpp"
#include "dnstap_collector/sinks.hpp"

namespace dnstap_collector {

namespace {
bool lower(id_t who, int nice, std::string_view what) {
    errno = 0;
    const int current = ::getpriority(PRIO_PROCESS, who);
    if (errno == 0 && current >= nice) return true;
    if (::setpriority(PRIO_PROCESS, who, nice) == 0) {
        log::debug("priority of " + std::string(what) + " lowered to nice " + std::to_string(nice));
        return true;
    }
    log::warning("cannot lower the priority of " + std::string(what) + " to nice " + std::to_string(nice) + ": " +
                 std::strerror(errno));
    return false;
}
}  // namespace

bool lower_thread_priority(int nice, std::string_view what) { return lower(static_cast<id_t>(::gettid()), nice, what); }

bool lower_process_priority(int pid, int nice, std::string_view what) {
    return pid > 0 && lower(static_cast<id_t>(pid), nice, what);
}

namespace {
bool write_id(const std::filesystem::path& file, long id, std::string_view what) {
    std::ofstream out(file);
    out << id << '\n';
    out.flush();
    if (out) {
        log::debug(std::string(what) + " moved to " + file.parent_path().string());
        return true;
    }
    log::warning("cannot move " + std::string(what) + " to " + file.parent_path().string() + ": " +
                 std::strerror(errno));
    return false;
}
}  // namespace

bool join_cgroup(const std::string& dir, std::string_view what) {
    // cgroup v2 moves a thread through cgroup.threads (threaded subtree), v1 through tasks.
    const std::filesystem::path base(dir);
    std::error_code ec;
    const auto file = std::filesystem::exists(base / "cgroup.threads", ec) ? base / "cgroup.threads" : base / "tasks";
    return write_id(file, static_cast<long>(::gettid()), what);
}

bool move_process_to_cgroup(const std::string& dir, int pid, std::string_view what) {
    return pid > 0 && write_id(std::filesystem::path(dir) / "cgroup.procs", pid, what);
}

void StoragePriority::apply_to_this_thread(std::string_view what) const {
    if (nice > 0) lower_thread_priority(nice, what);
    if (!cgroup.empty()) join_cgroup(cgroup, what);
}

bool StoragePriority::apply_to_process(int pid, std::string_view what) const {
    bool ok = true;
    if (nice > 0) ok = lower_process_priority(pid, nice, what) && ok;
    if (!cgroup.empty()) ok = move_process_to_cgroup(cgroup, pid, what) && ok;
    return ok;
}

}  // namespace dnstap_collector
