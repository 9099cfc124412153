// Human-readable renderings for the `read` and `tail` commands: one text line shaped like
// dnstap-read's default output, or one JSON object per message.

#include <cstdio>
#include <cstring>
#include <ctime>

#include "dnstap_collector/decode.hpp"
#include "decode/swar.hpp"

namespace dnstap_collector {

namespace {

// "22-Nov-2026 10:00:00.123" as dnstap-read prints it, but always in UTC so the output does
// not depend on the host's time zone.
void append_dnstap_read_time(std::string& out, std::int64_t ns) {
    if (ns < 0) {
        out += "\?\?\?\?-\?\?-\?\? \?\?:\?\?:\?\?.\?\?\?";
        return;
    }
    static constexpr const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                             "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    const std::time_t sec = static_cast<std::time_t>(ns / 1'000'000'000);
    const int ms = static_cast<int>((ns / 1'000'000) % 1000);
    std::tm tm{};
    gmtime_r(&sec, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%02d-%s-%04d %02d:%02d:%02d.%03d", tm.tm_mday,
                  months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
    out += buf;
}

// RFC 3339 with nanoseconds, like the golang dnstap tool: "2026-11-22T00:06:03.416672484Z".
std::string rfc3339(std::int64_t ns) {
    const std::time_t sec = static_cast<std::time_t>(ns / 1'000'000'000);
    std::tm tm{};
    gmtime_r(&sec, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%09dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(ns % 1'000'000'000));
    return buf;
}

void append_endpoint(std::string& out, const IpAddress& a, std::uint32_t port) {
    if (a.empty()) {
        out += '?';
        return;
    }
    out += a.to_string();
    out += ':';
    out += std::to_string(port);
}

std::string upper(std::string_view s) {
    std::string u(s);
    for (char& c : u)
        if (c >= 'a' && c <= 'z') c = static_cast<char>(c - ('a' - 'A'));
    return u;
}

// Minimal JSON writer: strings escaped per RFC 8259 by append_json_string.
class Json {
public:
    std::string out;

    void begin(char c) {
        comma();
        out += c;
        first_ = true;
    }
    void end(char c) {
        out += c;
        first_ = false;
    }
    void key(std::string_view k) {
        comma();
        string(k);
        out += ':';
        first_ = true;  // the value follows without a comma
    }
    void value(std::string_view s) {
        comma();
        string(s);
    }
    void value(std::int64_t v) {
        comma();
        out += std::to_string(v);
    }
    void value(bool v) {
        comma();
        out += v ? "true" : "false";
    }
    template <typename T>
    void field(std::string_view k, const T& v) {
        key(k);
        value(v);
    }
    void field(std::string_view k, const char* v) { field(k, std::string_view(v)); }
    void field(std::string_view k, const std::string& v) { field(k, std::string_view(v)); }
    void field(std::string_view k, std::uint32_t v) { field(k, static_cast<std::int64_t>(v)); }
    void field(std::string_view k, int v) { field(k, static_cast<std::int64_t>(v)); }

private:
    void comma() {
        if (!first_) out += ',';
        first_ = false;
    }
    void string(std::string_view s) { append_json_string(out, s); }
    bool first_ = true;
};

void dns_json(Json& j, const DnsMessage& m) {
    j.begin('{');
    j.field("size", m.size);
    j.field("id", static_cast<int>(m.id));
    j.field("opcode", opcode_to_text(m.opcode()));
    j.field("rcode", rcode_to_text(m.rcode));
    j.field("flags", flags_to_text(m.flags));
    j.field("qdcount", static_cast<int>(m.qdcount));
    j.field("ancount", static_cast<int>(m.ancount));
    j.field("nscount", static_cast<int>(m.nscount));
    j.field("arcount", static_cast<int>(m.arcount));
    if (m.has_question) {
        j.key("question");
        j.begin('{');
        j.field("name", m.qname);
        j.field("class", class_to_text(m.qclass));
        j.field("type", type_to_text(m.qtype));
        j.end('}');
    }
    if (!m.answers.empty()) {
        j.key("answers");
        j.begin('[');
        for (const ResourceRecord& rr : m.answers) {
            j.begin('{');
            j.field("name", rr.name);
            j.field("ttl", rr.ttl);
            j.field("class", class_to_text(rr.rclass));
            j.field("type", type_to_text(rr.type));
            j.field("rdata", rr.rdata);
            j.end('}');
        }
        j.end(']');
    }
    if (m.has_edns) {
        j.key("edns");
        j.begin('{');
        j.field("version", static_cast<int>(m.edns_version));
        j.field("udp_size", static_cast<int>(m.edns_udp_size));
        j.field("do", m.edns_do);
        if (!m.ecs.empty()) j.field("client_subnet", m.ecs);
        if (m.ede_code >= 0) {
            j.field("ede_code", m.ede_code);
            j.field("ede_text", m.ede_text);
        }
        j.end('}');
    }
    if (!m.error.empty()) j.field("error", m.error);
    j.end('}');
}

}  // namespace

std::string format_text(const DnstapMessage& m) {
    std::string out;
    out.reserve(128);
    append_dnstap_read_time(out, is_query(m.type) ? m.query_time_ns : m.response_time_ns);
    out += ' ';
    out += short_name(m.type);
    out += ' ';
    append_endpoint(out, m.query_address, m.query_port);
    out += is_query(m.type) ? " -> " : " <- ";
    append_endpoint(out, m.response_address, m.response_port);
    out += ' ';
    out += m.protocol == SocketProtocol::unknown ? std::string("UDP") : upper(to_string(m.protocol));
    out += ' ';
    // Like dnstap-read: the size and question of the message matching the type.
    const DnsMessage* d = is_query(m.type) ? (m.query ? &*m.query : nullptr)
                                           : (m.response ? &*m.response : nullptr);
    out += std::to_string(d != nullptr ? d->size : 0);
    out += "b ";
    if (d != nullptr && d->has_question) {
        out += d->qname;
        out += '/';
        out += class_to_text(d->qclass);
        out += '/';
        out += type_to_text(d->qtype);
    } else {
        out += "?/?/?";
    }
    return out;
}

namespace {

// Whether a byte needs an escape in a JSON string (as append_json_string writes them).
constexpr bool json_special(unsigned char c) noexcept { return c < 0x20 || c == '"' || c == '\\' || c == 0x7f; }
std::uint64_t json_special_word(std::uint64_t x) noexcept {
    return swar::below(x, 0x20) | swar::equal(x, '"') | swar::equal(x, '\\') | swar::equal(x, 0x7f);
}

}  // namespace

bool json_plain(std::string_view s) noexcept { return !swar::scan(s.data(), s.size(), json_special_word); }

char* write_json_string(char* out, std::string_view s) noexcept {
    static constexpr char hex[] = "0123456789abcdef";
    const char* d = s.data();
    const std::size_t n = s.size();
    *out++ = '"';
    // Runs of characters that need no escape (nearly always the whole string) are copied
    // whole, found eight bytes at a time.
    std::size_t i = 0;
    while (i < n) {
        const std::size_t run = i;
        while (i + 8 <= n && !json_special_word(swar::load(d + i))) i += 8;
        while (i < n && !json_special(static_cast<unsigned char>(d[i]))) ++i;
        std::memcpy(out, d + run, i - run);
        out += i - run;
        if (i == n) break;
        const auto c = static_cast<unsigned char>(d[i++]);
        *out++ = '\\';
        switch (c) {
        case '"': *out++ = '"'; break;
        case '\\': *out++ = '\\'; break;
        case '\n': *out++ = 'n'; break;
        case '\r': *out++ = 'r'; break;
        case '\t': *out++ = 't'; break;
        default:
            std::memcpy(out, "u00", 3);
            out[3] = hex[c >> 4];
            out[4] = hex[c & 0xf];
            out += 5;
        }
    }
    *out++ = '"';
    return out;
}

void append_json_string(std::string& out, std::string_view s) {
    if (json_plain(s)) {  // nearly always: the string whole, between quotes
        out += '"';
        out.append(s);
        out += '"';
        return;
    }
    const std::size_t at = out.size();
    out.resize(at + 6 * s.size() + 2);
    out.resize(static_cast<std::size_t>(write_json_string(out.data() + at, s) - out.data()));
}

std::string format_json(const DnstapMessage& m) {
    Json j;
    j.begin('{');
    j.field("type", to_string(m.type));
    if (!m.identity.empty()) j.field("identity", m.identity);
    if (!m.version.empty()) j.field("version", m.version);
    if (!m.extra.empty()) j.field("extra", m.extra);
    if (m.family != SocketFamily::unknown)
        j.field("socket_family", m.family == SocketFamily::inet ? "INET" : "INET6");
    if (m.protocol != SocketProtocol::unknown) j.field("socket_protocol", to_string(m.protocol));
    if (!m.query_address.empty()) j.field("query_address", m.query_address.to_string());
    if (m.has_query_port) j.field("query_port", m.query_port);
    if (!m.response_address.empty()) j.field("response_address", m.response_address.to_string());
    if (m.has_response_port) j.field("response_port", m.response_port);
    if (m.bad_address_length) j.field("bad_address_length", true);
    if (m.query_time_ns >= 0) {
        j.field("query_time", rfc3339(m.query_time_ns));
        j.field("query_time_ns", m.query_time_ns);
    }
    if (m.response_time_ns >= 0) {
        j.field("response_time", rfc3339(m.response_time_ns));
        j.field("response_time_ns", m.response_time_ns);
    }
    if (!m.query_zone.empty()) j.field("query_zone", m.query_zone);
    if (m.policy.present) {
        j.key("policy");
        j.begin('{');
        if (!m.policy.type.empty()) j.field("type", m.policy.type);
        if (!m.policy.rule.empty()) j.field("rule", m.policy.rule);
        if (!m.policy.action.empty()) j.field("action", m.policy.action);
        if (!m.policy.match.empty()) j.field("match", m.policy.match);
        if (!m.policy.value.empty()) j.field("value", m.policy.value);
        j.end('}');
    }
    if (m.http_protocol != 0) j.field("http_protocol", static_cast<int>(m.http_protocol));
    j.field("frame_size", m.frame_size);
    if (m.query) {
        j.key("query_message");
        dns_json(j, *m.query);
    }
    if (m.response) {
        j.key("response_message");
        dns_json(j, *m.response);
    }
    j.end('}');
    return std::move(j.out);
}

}  // namespace dnstap_collector
