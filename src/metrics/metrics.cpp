#include "dnstap_collector/metrics.hpp"

#include <sstream>
#include <tuple>

namespace dnstap_collector {

std::string_view to_string(DropReason r) noexcept {
    switch (r) {
    case DropReason::queue_full: return "queue_full";
    case DropReason::frame_too_large: return "frame_too_large";
    case DropReason::partial_frame: return "partial_frame";
    case DropReason::decode_error: return "decode_error";
    case DropReason::sink_full: return "sink_full";
    case DropReason::spool_full: return "spool_full";
    case DropReason::row_rejected: return "row_rejected";
    case DropReason::filtered: return "filtered";
    case DropReason::shutdown: return "shutdown";
    case DropReason::count_: break;
    }
    return "unknown";
}

std::uint64_t Metrics::dropped_total() const noexcept {
    std::uint64_t total = 0;
    for (const auto& d : dropped) total += d.load(std::memory_order_relaxed);
    return total;
}

namespace {
std::uint64_t get(const Metrics::Counter& c) { return c.load(std::memory_order_relaxed); }
}  // namespace

std::string Metrics::summary() const {
    std::ostringstream out;
    out << "frames_received=" << get(frames_received) << " bytes_received=" << get(bytes_received)
        << " frames_accepted=" << get(frames_accepted) << " messages_decoded=" << get(messages_decoded)
        << " messages_stored=" << get(messages_stored) << " rows_written=" << get(rows_written)
        << " pairs_matched=" << get(pairs_matched) << " queries_timed_out=" << get(queries_timed_out)
        << " responses_orphaned=" << get(responses_orphaned) << " duplicates=" << get(duplicates)
        << " dns_parse_errors=" << get(dns_parse_errors) << " dropped_total=" << dropped_total();
    if (auto n = get(file_frames_dropped)) out << " file_frames_dropped=" << n;
    if (auto n = get(frames_overflowed)) out << " frames_overflowed=" << n;
    if (auto n = get(frames_restored)) out << " frames_restored=" << n;
    if (auto n = get(overflow_frames)) out << " overflow_frames=" << n;
    if (auto n = get(storage_yield_ms)) out << " storage_yield_ms=" << n;
    for (std::size_t i = 0; i < dropped.size(); ++i) {
        if (auto n = get(dropped[i]))
            out << " dropped_" << to_string(static_cast<DropReason>(i)) << '=' << n;
    }
    out << " messages_spooled=" << get(messages_spooled);
    return out.str();
}

std::string Metrics::prometheus() const {
    std::ostringstream out;
    auto metric = [&](std::string_view name, std::string_view type, std::string_view help, auto value) {
        out << "# HELP dnstap_collector_" << name << ' ' << help << '\n'
            << "# TYPE dnstap_collector_" << name << ' ' << type << '\n'
            << "dnstap_collector_" << name << ' ' << value << '\n';
    };
    metric("connections_total", "counter", "Frame Streams connections accepted.", get(connections_total));
    metric("connections_active", "gauge", "Frame Streams connections open now.", get(connections_active));
    metric("connections_rejected_total", "counter", "Connections closed for protocol errors.", get(connections_rejected));
    metric("frames_received_total", "counter", "Data frames received.", get(frames_received));
    metric("received_bytes_total", "counter", "Data frame bytes received.", get(bytes_received));
    for (const auto& [name, help, values] :
         {std::tuple{"connection_frames_total", "Data frames received, by connection kind.", &connection_frames},
          std::tuple{"connection_received_bytes_total", "Data frame bytes received, by connection kind.", &connection_bytes}}) {
        out << "# HELP dnstap_collector_" << name << ' ' << help << '\n'
            << "# TYPE dnstap_collector_" << name << " counter\n";
        for (std::size_t i = 0; i < values->size(); ++i)
            out << "dnstap_collector_" << name << "{kind=\"" << (i == 0 ? "unix" : "tcp") << "\"} " << get((*values)[i])
                << '\n';
    }
    metric("frames_accepted_total", "counter", "Frames queued for decoding.", get(frames_accepted));
    out << "# HELP dnstap_collector_dropped_total Messages dropped, by reason.\n"
        << "# TYPE dnstap_collector_dropped_total counter\n";
    for (std::size_t i = 0; i < dropped.size(); ++i)
        out << "dnstap_collector_dropped_total{reason=\"" << to_string(static_cast<DropReason>(i)) << "\"} "
            << get(dropped[i]) << '\n';
    metric("messages_decoded_total", "counter", "dnstap messages decoded.", get(messages_decoded));
    metric("dns_parse_errors_total", "counter", "DNS payloads that did not fully parse (row kept).", get(dns_parse_errors));
    metric("messages_stored_total", "counter", "Messages stored in rows.", get(messages_stored));
    metric("pairs_matched_total", "counter", "Queries matched with their response.", get(pairs_matched));
    metric("queries_timed_out_total", "counter", "Queries stored without a response after the timeout.", get(queries_timed_out));
    metric("responses_orphaned_total", "counter", "Responses stored without a query.", get(responses_orphaned));
    metric("duplicates_total", "counter", "Messages whose pairing key was already pending.", get(duplicates));
    metric("rows_written_total", "counter", "Rows written to PostgreSQL.", get(rows_written));
    metric("batches_written_total", "counter", "Batches committed to PostgreSQL.", get(batches_written));
    out << "# HELP dnstap_collector_batch_latency_seconds Time to write one batch to PostgreSQL.\n"
        << "# TYPE dnstap_collector_batch_latency_seconds summary\n"
        << "dnstap_collector_batch_latency_seconds_sum " << static_cast<double>(get(batch_latency_us_sum)) / 1e6 << '\n'
        << "dnstap_collector_batch_latency_seconds_count " << get(batches_written) << '\n';
    metric("file_frames_dropped_total", "counter", "Frames missing from the file copy written beside PostgreSQL.",
           get(file_frames_dropped));
    metric("spool_bytes", "gauge", "Bytes waiting in the on-disk spool.", get(spool_bytes));
    metric("spooled_messages", "gauge", "Messages waiting in the on-disk spool.", get(messages_spooled));
    metric("database_up", "gauge", "1 when PostgreSQL is reachable.", get(database_up));
    metric("queue_depth", "gauge", "Frames waiting for a worker (overflow files included).", get(queue_depth));
    metric("overflow_bytes", "gauge", "Bytes of frames waiting in overflow files.", get(overflow_bytes));
    metric("overflow_frames", "gauge", "Frames waiting in overflow files.", get(overflow_frames));
    metric("frames_overflowed_total", "counter", "Frames that waited in an overflow file.", get(frames_overflowed));
    metric("frames_restored_total", "counter", "Frames left in overflow files by a previous run.", get(frames_restored));
    metric("storage_yielding", "gauge", "1 while storage waits because a local sender waits for a CPU.", get(storage_yielding));
    out << "# HELP dnstap_collector_storage_yield_seconds_total Time storage waited for local senders to get their CPU.\n"
        << "# TYPE dnstap_collector_storage_yield_seconds_total counter\n"
        << "dnstap_collector_storage_yield_seconds_total " << static_cast<double>(get(storage_yield_ms)) / 1e3 << '\n';
    return out.str();
}

}  // namespace dnstap_collector
