// On-disk spool for encoded batches while the database is away. One file per batch,
// sequence-numbered, written to a temporary name, fsync'd and renamed, so a crash leaves
// whole batches only. Replayed oldest first; each file is deleted after its commit.
#pragma once

#include <cstdint>
#include <deque>
#include <filesystem>
#include <optional>
#include <string>

#include "dnstap_collector/log.hpp"
#include "sinks/copy_encoder.hpp"

namespace dnstap_collector {

struct Metrics;

class Spool {
public:
    // Creates the directory if needed and picks up the files a previous run left.
    Spool(std::filesystem::path dir, std::uint64_t max_bytes, Metrics& metrics);

    bool empty() const noexcept { return files_.empty(); }
    std::size_t files() const noexcept { return files_.size(); }
    std::uint64_t bytes() const noexcept { return bytes_; }
    std::uint64_t messages() const noexcept { return messages_; }

    // False when it would exceed max_bytes or cannot be written (logged); the caller counts
    // the messages as dropped.
    bool put(const copy::EncodedBatch& batch);
    // The oldest batch. A file that does not read back whole is moved aside (.bad) and
    // skipped with a warning.
    std::optional<copy::EncodedBatch> front();
    void pop_front();  // after the front batch is committed
    // After a partial replay: the front file keeps only what is still to be written.
    bool replace_front(const copy::EncodedBatch& rest);

    // File format, for tests: serialize / parse one batch.
    static std::string serialize(const copy::EncodedBatch& b);
    static std::optional<copy::EncodedBatch> parse(std::string_view data);
    // Messages in a spool file from its first bytes (format 2) or its row index (format 1);
    // 0 when it cannot be read.
    static std::uint64_t count_messages(const std::filesystem::path& file);

private:
    void update_metric();
    bool write_file(const std::filesystem::path& path, const std::string& data);

    std::filesystem::path dir_;
    std::uint64_t max_bytes_;
    Metrics& metrics_;
    struct File { std::filesystem::path path; std::uint64_t size; std::uint64_t messages; };
    std::deque<File> files_;
    std::uint64_t bytes_ = 0;
    std::uint64_t messages_ = 0;  // dnstap messages in the files (Metrics::messages_spooled)
    std::uint64_t next_seq_ = 1;
    // A full file system fails every batch: one line per interval, with the count held back.
    log::RateLimit write_log_{std::chrono::seconds(10)};
};

}  // namespace dnstap_collector
