#include <cstdio>
#include <ctime>

#include "dnstap_collector/pair.hpp"

namespace dnstap_collector {

ExchangeView::ExchangeView(const Exchange& e) noexcept
    : first(e.any()),
      question(e.query && e.query->query ? &*e.query->query : (e.response && e.response->response ? &*e.response->response : nullptr)),
      answer(e.response && e.response->response ? &*e.response->response : nullptr),
      time_ns(-1), response_time_ns(-1), latency_us(-1) {
    if (e.response) response_time_ns = e.response->response_time_ns;
    std::int64_t query_time = -1;
    if (e.query) query_time = e.query->query_time_ns;
    if (query_time < 0 && e.response && e.response->query_time_ns > 0 &&
        e.response->query_time_ns < response_time_ns)
        query_time = e.response->query_time_ns;  // senders that copy the query time into the response
    time_ns = query_time >= 0 ? query_time : response_time_ns;
    // Kept even when negative (sender clock skew between threads): clamping would hide it.
    if (query_time >= 0 && response_time_ns >= 0) latency_us = (response_time_ns - query_time) / 1000;
}

namespace {

std::string timestamp(std::int64_t ns) {
    if (ns < 0) return "-";
    const std::time_t seconds = static_cast<std::time_t>(ns / 1'000'000'000);
    std::tm tm{};
    gmtime_r(&seconds, &tm);
    char buf[64];
    const auto n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(buf + n, sizeof buf - n, ".%06dZ", static_cast<int>((ns / 1000) % 1'000'000));
    return buf;
}

std::string endpoint(const IpAddress& a, std::uint32_t port) {
    if (a.empty()) return "-";
    return a.length == 16 ? "[" + a.to_string() + "]:" + std::to_string(port) : a.to_string() + ":" + std::to_string(port);
}

}  // namespace

std::string format_exchange_text(const Exchange& e) {
    const ExchangeView v(e);
    std::string line = timestamp(v.time_ns);
    line += ' ';
    line += e.query ? short_name(e.query->type) : "--";
    line += e.response ? short_name(e.response->type) : "--";
    line += ' ';
    line += v.first.identity.empty() ? "-" : v.first.identity;
    line += ' ' + endpoint(v.first.query_address, v.first.query_port) + " -> " +
            endpoint(v.first.response_address, v.first.response_port) + ' ';
    line += to_string(v.first.protocol);
    if (v.question && v.question->has_question)
        line += ' ' + v.question->qname + '/' + class_to_text(v.question->qclass) + '/' + type_to_text(v.question->qtype);
    if (v.answer) {
        line += ' ' + rcode_to_text(v.answer->rcode);
        line += " an=" + std::to_string(v.answer->ancount);
    } else {
        line += " (no response)";
    }
    if (v.latency_us != -1) line += ' ' + std::to_string(v.latency_us) + "us";
    return line;
}

std::string format_exchange_json(const Exchange& e) {
    const ExchangeView v(e);
    std::string out = "{\"time\":";
    append_json_string(out, timestamp(v.time_ns));
    out += ",\"identity\":";
    append_json_string(out, v.first.identity);
    out += ",\"kind\":";
    append_json_string(out, kind_of(v.first.type));
    out += ",\"transport\":";
    append_json_string(out, to_string(v.first.protocol));
    out += ",\"query_address\":";
    append_json_string(out, v.first.query_address.to_string());
    out += ",\"query_port\":" + std::to_string(v.first.query_port);
    out += ",\"response_address\":";
    append_json_string(out, v.first.response_address.to_string());
    out += ",\"response_port\":" + std::to_string(v.first.response_port);
    if (v.question && v.question->has_question) {
        out += ",\"dns_id\":" + std::to_string(v.question->id) + ",\"qname\":";
        append_json_string(out, lowercase_name(v.question->qname));
        out += ",\"qtype\":";
        append_json_string(out, type_to_text(v.question->qtype));
        out += ",\"qclass\":";
        append_json_string(out, class_to_text(v.question->qclass));
    }
    out += std::string(",\"has_query\":") + (e.query ? "true" : "false");
    out += std::string(",\"has_response\":") + (e.response ? "true" : "false");
    if (v.answer) {
        out += ",\"rcode\":";
        append_json_string(out, rcode_to_text(v.answer->rcode));
        out += ",\"flags\":";
        append_json_string(out, flags_to_text(v.answer->flags));
        out += ",\"answers\":[";
        bool comma = false;
        for (const auto& rr : v.answer->answers) {
            if (comma) out.push_back(',');
            comma = true;
            out += "{\"name\":";
            append_json_string(out, rr.name);
            out += ",\"type\":";
            append_json_string(out, type_to_text(rr.type));
            out += ",\"ttl\":" + std::to_string(rr.ttl) + ",\"rdata\":";
            append_json_string(out, rr.rdata);
            out.push_back('}');
        }
        out.push_back(']');
    }
    if (v.latency_us != -1) out += ",\"latency_us\":" + std::to_string(v.latency_us);
    out.push_back('}');
    return out;
}

}  // namespace dnstap_collector
