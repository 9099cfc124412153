#include "sinks/spool.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <system_error>
#include <vector>

#include "dnstap_collector/log.hpp"
#include "dnstap_collector/metrics.hpp"

namespace dnstap_collector {
namespace fs = std::filesystem;

namespace {

// Format 2: magic2, the batch's message total (so a start can count the spool by reading
// each file's first bytes), then format 1's body with 10-column pdns rows (rdata_name).
// Format 1 files (older collectors) are still read: pdns rows of 9 columns.
constexpr std::string_view magic = "DNSTAPSPOOL1\n";
constexpr std::string_view magic2 = "DNSTAPSPOOL2\n";
constexpr std::string_view prefix = "batch-";
constexpr std::string_view suffix = ".spool";

void put64(std::string& out, std::uint64_t v) {
    for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((v >> (i * 8)) & 0xff));
}

struct Reader {
    std::string_view data;
    std::size_t pos = 0;
    bool ok = true;
    std::uint64_t u64() {
        if (data.size() - pos < 8) { ok = false; return 0; }
        std::uint64_t v = 0;
        for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(data[pos++]);
        return v;
    }
    std::string bytes(std::uint64_t n) {
        if (data.size() - pos < n) { ok = false; return {}; }
        std::string s(data.substr(pos, n));
        pos += n;
        return s;
    }
};

// Sequence number of "batch-00000000000000000042.spool", or 0.
std::uint64_t seq_of(const fs::path& p) {
    std::string name = p.filename().string();
    if (!name.starts_with(prefix) || !name.ends_with(suffix)) return 0;
    std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return 0;
    return std::stoull(digits);
}

bool write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

void fsync_dir(const fs::path& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

}  // namespace

std::string Spool::serialize(const copy::EncodedBatch& b) {
    std::string_view m = b.pdns_format == 1 ? magic : magic2;
    std::string out(m);
    if (m == magic2) put64(out, b.message_total());
    put64(out, b.size());
    for (std::size_t i = 0; i < b.size(); ++i) {
        put64(out, b.row_end[i]);
        put64(out, b.messages[i]);
        put64(out, static_cast<std::uint64_t>(b.times_us[i]));
    }
    put64(out, b.rows.size());
    out += b.rows;
    put64(out, b.pdns_count);
    put64(out, b.pdns_rows.size());
    out += b.pdns_rows;
    out += m;  // a torn write shows as a missing trailer
    return out;
}

std::optional<copy::EncodedBatch> Spool::parse(std::string_view data) {
    std::string_view m = data.starts_with(magic2) ? magic2 : magic;
    if (!data.starts_with(m)) return std::nullopt;
    Reader r{data, m.size()};
    copy::EncodedBatch b;
    b.pdns_format = m == magic2 ? 2 : 1;
    std::uint64_t total = m == magic2 ? r.u64() : 0;
    std::uint64_t n = r.u64();
    if (!r.ok || n > data.size() / 24) return std::nullopt;
    for (std::uint64_t i = 0; i < n && r.ok; ++i) {
        b.row_end.push_back(static_cast<std::uint32_t>(r.u64()));
        b.messages.push_back(static_cast<std::uint8_t>(r.u64()));
        b.times_us.push_back(static_cast<std::int64_t>(r.u64()));
    }
    b.rows = r.bytes(r.u64());
    b.pdns_count = static_cast<std::uint32_t>(r.u64());
    b.pdns_rows = r.bytes(r.u64());
    if (!r.ok || data.substr(r.pos) != m) return std::nullopt;
    if (m == magic2 && total != b.message_total()) return std::nullopt;
    std::uint32_t prev = 0;
    for (std::uint32_t end : b.row_end) {
        if (end < prev || end > b.rows.size()) return std::nullopt;
        prev = end;
    }
    if (prev != b.rows.size()) return std::nullopt;
    return b;
}

std::uint64_t Spool::count_messages(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    auto read = [&](std::size_t n) {
        std::string s(n, '\0');
        in.read(s.data(), static_cast<std::streamsize>(n));
        if (static_cast<std::size_t>(in.gcount()) != n) s.clear();
        return s;
    };
    std::string head = read(magic.size() + 8);
    if (head.empty()) return 0;
    Reader r{head, magic.size()};
    std::uint64_t v = r.u64();
    if (std::string_view(head).starts_with(magic2)) return v;
    if (!std::string_view(head).starts_with(magic)) return 0;
    // Format 1: v rows of (row_end, messages, time), 24 bytes each.
    std::uint64_t size = fs::file_size(file);
    if (v > size / 24) return 0;
    std::string index = read(static_cast<std::size_t>(v) * 24);
    if (index.size() != v * 24) return 0;
    std::uint64_t total = 0;
    Reader ir{index, 0};
    for (std::uint64_t i = 0; i < v; ++i) {
        ir.u64();
        total += ir.u64();
        ir.u64();
    }
    return total;
}

Spool::Spool(fs::path dir, std::uint64_t max_bytes, Metrics& metrics)
    : dir_(std::move(dir)), max_bytes_(max_bytes), metrics_(metrics) {
    fs::create_directories(dir_);
    std::vector<std::pair<std::uint64_t, File>> found;
    for (const auto& entry : fs::directory_iterator(dir_)) {
        if (!entry.is_regular_file()) continue;
        if (entry.path().extension() == ".tmp") {  // a write the last run did not finish
            std::error_code ec;
            fs::remove(entry.path(), ec);
            continue;
        }
        if (std::uint64_t seq = seq_of(entry.path()))
            found.push_back({seq, File{entry.path(), entry.file_size(), count_messages(entry.path())}});
    }
    std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& [seq, file] : found) {
        bytes_ += file.size;
        messages_ += file.messages;
        next_seq_ = seq + 1;
        files_.push_back(std::move(file));
    }
    if (!files_.empty())
        log::info("spool " + dir_.string() + ": " + std::to_string(files_.size()) + " batches (" +
                  std::to_string(messages_) + " messages, " + std::to_string(bytes_) + " bytes) to replay");
    update_metric();
}

bool Spool::write_file(const fs::path& path, const std::string& data) {
    fs::path tmp = path;
    tmp += ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    bool ok = fd >= 0 && write_all(fd, data) && ::fsync(fd) == 0;
    int err = errno;
    if (fd >= 0) ::close(fd);
    if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) {
        ok = false;
        err = errno;
    }
    if (!ok) {
        std::error_code ec;
        fs::remove(tmp, ec);
        std::uint64_t suppressed = 0;
        if (write_log_.allow(suppressed))
            log::error("spool: cannot write " + path.string() + ": " + std::strerror(err) +
                       (suppressed ? " (" + std::to_string(suppressed) + " more since)" : ""));
        return false;
    }
    fsync_dir(dir_);
    return true;
}

bool Spool::put(const copy::EncodedBatch& batch) {
    std::string data = serialize(batch);
    if (bytes_ + data.size() > max_bytes_) return false;
    char name[64];
    std::snprintf(name, sizeof name, "batch-%020llu.spool", static_cast<unsigned long long>(next_seq_));
    fs::path path = dir_ / name;
    if (!write_file(path, data)) return false;
    ++next_seq_;
    bytes_ += data.size();
    messages_ += batch.message_total();
    files_.push_back(File{path, data.size(), batch.message_total()});
    update_metric();
    return true;
}

bool Spool::replace_front(const copy::EncodedBatch& rest) {
    if (files_.empty()) return false;
    std::string data = serialize(rest);
    if (!write_file(files_.front().path, data)) return false;
    bytes_ = bytes_ - std::min(bytes_, files_.front().size) + data.size();
    files_.front().size = data.size();
    messages_ = messages_ - std::min(messages_, files_.front().messages) + rest.message_total();
    files_.front().messages = rest.message_total();
    update_metric();
    return true;
}

std::optional<copy::EncodedBatch> Spool::front() {
    while (!files_.empty()) {
        const File& f = files_.front();
        std::ifstream in(f.path, std::ios::binary);
        std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (auto b = parse(data)) return b;
        // Its messages (if its header told how many) were counted as spooled: now they are
        // lost, counted as spool_full (the spool could not keep them).
        log::warning("spool: " + f.path.string() + " is damaged; moved aside as .bad" +
                     (f.messages ? " (" + std::to_string(f.messages) + " messages counted as dropped, spool_full)" : ""));
        metrics_.drop(DropReason::spool_full, f.messages);
        std::error_code ec;
        fs::rename(f.path, fs::path(f.path) += ".bad", ec);
        bytes_ -= std::min(bytes_, f.size);
        messages_ -= std::min(messages_, f.messages);
        files_.pop_front();
        update_metric();
    }
    return std::nullopt;
}

void Spool::pop_front() {
    if (files_.empty()) return;
    std::error_code ec;
    fs::remove(files_.front().path, ec);
    if (ec) log::warning("spool: cannot remove " + files_.front().path.string() + ": " + ec.message());
    bytes_ -= std::min(bytes_, files_.front().size);
    messages_ -= std::min(messages_, files_.front().messages);
    files_.pop_front();
    update_metric();
}

void Spool::update_metric() {
    metrics_.spool_bytes.store(bytes_, std::memory_order_relaxed);
    metrics_.messages_spooled.store(messages_, std::memory_order_relaxed);
}

}  // namespace dnstap_collector
