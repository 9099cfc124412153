// libFuzzer target: DNS wire format (src/dns: parse_dns on libknot, name_to_text, mnemonics).
//
// The input is one DNS message as it appears in a dnstap query_message/response_message
// (seeds: tests/fuzz/corpus/fuzz_dns_parse/, payloads of frames from a real named).
// Invariants beyond "no crash / ASan / UBSan report":
//   * every string parse_dns produces (qname, answer names and rdata, ecs, ede_text, error)
//     is printable ASCII: these go to PostgreSQL text columns and must be valid UTF-8
//     without NUL or control characters;
//   * presentation names are at most 255 octets * 4 ("\DDD") long, answer owner names are
//     lowercase, the error is empty exactly when parse_dns returned true;
//   * header fields match the wire; answers.size() is bounded by the message size;
//   * parsing the same bytes twice gives the same result (per-thread arena/parser reuse);
//   * parse_dns equals dns_detail::parse_dns_with_libknot (every record through libknot),
//     every field and the error: the hand-written paths for common messages must only ever
//     give what libknot gives;
//   * name_to_text on the input as a stand-alone name: printable, lowercase when asked,
//     and it reads back (presentation -> wire) to exactly the input, case-folded;
//   * the mnemonics and format_json/format_text over a message holding the result are
//     printable, and the JSON is well-formed.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dns/dns_internal.hpp"
#include "dnstap_collector/decode.hpp"
#include "dnstap_collector/dns.hpp"
#include "fuzz_common.hpp"

using namespace dnstap_collector;
using fuzz::check_printable;

namespace {

constexpr std::size_t max_name_text = 255 * 4;

void check_no_upper(std::string_view s, const char* what) {
    for (const char c : s)
        if (c >= 'A' && c <= 'Z') fuzz::fail(what, s);
}

bool same(const DnsMessage& a, const DnsMessage& b) {
    if (a.error != b.error || a.size != b.size || a.id != b.id || a.flags != b.flags || a.rcode != b.rcode ||
        a.qdcount != b.qdcount || a.ancount != b.ancount || a.nscount != b.nscount || a.arcount != b.arcount ||
        a.has_question != b.has_question || a.qname != b.qname || a.qtype != b.qtype || a.qclass != b.qclass ||
        a.has_edns != b.has_edns || a.edns_udp_size != b.edns_udp_size || a.edns_version != b.edns_version ||
        a.edns_do != b.edns_do || a.ecs != b.ecs || a.ede_code != b.ede_code || a.ede_text != b.ede_text ||
        a.answers.size() != b.answers.size())
        return false;
    for (std::size_t i = 0; i < a.answers.size(); ++i) {
        const auto& x = a.answers[i];
        const auto& y = b.answers[i];
        if (x.name != y.name || x.type != y.type || x.rclass != y.rclass || x.ttl != y.ttl || x.rdata != y.rdata)
            return false;
    }
    return true;
}

// Presentation name (as name_to_text writes it) back to wire format, lowercase. False when
// the text is not something name_to_text could have written.
bool text_to_wire(std::string_view t, std::vector<std::uint8_t>& wire) {
    wire.clear();
    if (t == ".") {
        wire.push_back(0);
        return true;
    }
    std::vector<std::uint8_t> label;
    auto end_label = [&] {
        if (label.empty() || label.size() > 63) return false;
        wire.push_back(static_cast<std::uint8_t>(label.size()));
        wire.insert(wire.end(), label.begin(), label.end());
        label.clear();
        return true;
    };
    for (std::size_t i = 0; i < t.size(); ++i) {
        char c = t[i];
        if (c == '.') {
            if (!end_label()) return false;
            continue;
        }
        if (c == '\\') {
            if (i + 1 >= t.size()) return false;
            if (t[i + 1] >= '0' && t[i + 1] <= '9') {
                if (i + 3 >= t.size()) return false;
                int v = 0;
                for (int k = 1; k <= 3; ++k) {
                    const char d = t[i + k];
                    if (d < '0' || d > '9') return false;
                    v = v * 10 + (d - '0');
                }
                if (v > 255) return false;
                label.push_back(static_cast<std::uint8_t>(v));
                i += 3;
            } else {
                label.push_back(static_cast<std::uint8_t>(t[i + 1]));
                ++i;
            }
            continue;
        }
        label.push_back(static_cast<std::uint8_t>(c));
    }
    if (!end_label()) return false;
    wire.push_back(0);
    return true;
}

std::uint8_t fold(std::uint8_t c) { return c >= 'A' && c <= 'Z' ? static_cast<std::uint8_t>(c + 32) : c; }

void check_name_to_text(std::span<const std::uint8_t> in) {
    std::string lower, kept;
    const bool ok = name_to_text(in, lower, true);
    const bool ok2 = name_to_text(in, kept, false);
    if (ok != ok2) fuzz::fail("name_to_text: validity depends on lowercase", lower);
    check_printable(lower, "name_to_text");
    check_printable(kept, "name_to_text(lowercase=false)");
    if (lower.size() > max_name_text) fuzz::fail("name_to_text: longer than 255*4", lower);
    if (lowercase_name(kept) != lower) fuzz::fail("name_to_text: lowercase_name(kept) != lowercase", kept);
    if (!ok) return;
    check_no_upper(lower, "name_to_text: uppercase in lowercase output");
    std::vector<std::uint8_t> wire;
    if (!text_to_wire(kept, wire)) fuzz::fail("name_to_text output does not read back", kept);
    if (wire.size() != in.size()) fuzz::fail("name_to_text does not round-trip (length)", kept);
    for (std::size_t i = 0; i < wire.size(); ++i)
        if (wire[i] != in[i]) fuzz::fail("name_to_text does not round-trip (bytes)", kept);
    if (!text_to_wire(lower, wire) || wire.size() != in.size()) fuzz::fail("lowercase name does not read back", lower);
    for (std::size_t i = 0; i < wire.size(); ++i)
        if (wire[i] != fold(in[i])) fuzz::fail("lowercase name is not the case-folded input", lower);
}

void check_message(const DnsMessage& m, std::span<const std::uint8_t> wire, bool ok) {
    if (ok != m.error.empty()) fuzz::fail("parse_dns: result and error disagree", m.error);
    if (m.size != wire.size()) fuzz::fail("parse_dns: size", m.error);
    check_printable(m.error, "error");
    check_printable(m.qname, "qname");
    if (m.qname.size() > max_name_text) fuzz::fail("qname longer than 255*4", m.qname);
    if (!m.has_question && !m.qname.empty()) fuzz::fail("qname without question", m.qname);
    if (m.has_question && m.qname.empty()) fuzz::fail("question with empty qname", m.qname);
    check_printable(m.ecs, "ecs");
    check_printable(m.ede_text, "ede_text");
    if (m.ede_code > 0xffff) fuzz::fail("ede_code", m.ede_text);
    if (wire.size() >= 12) {
        const auto rd16 = [&](std::size_t at) { return static_cast<std::uint16_t>((wire[at] << 8) | wire[at + 1]); };
        if (m.id != rd16(0) || m.flags != rd16(2) || m.qdcount != rd16(4) || m.ancount != rd16(6) ||
            m.nscount != rd16(8) || m.arcount != rd16(10))
            fuzz::fail("header fields do not match the wire", m.error);
        if ((m.rcode & 0xf) != (m.flags & 0xf)) fuzz::fail("rcode low bits differ from the header", m.error);
        if (!m.has_edns && m.rcode != (m.flags & 0xf)) fuzz::fail("extended rcode without EDNS", m.error);
    } else if (ok || m.has_question || !m.answers.empty()) {
        fuzz::fail("short message parsed", m.error);
    }
    // Each record takes at least 11 octets on the wire (root owner + fixed part).
    if (m.answers.size() * 11 > wire.size()) fuzz::fail("more answers than the wire can hold", m.error);
    for (const auto& rr : m.answers) {
        check_printable(rr.name, "answer name");
        check_printable(rr.rdata, "answer rdata");
        if (rr.name.size() > max_name_text) fuzz::fail("owner longer than 255*4", rr.name);
        if (rr.name != "?") check_no_upper(rr.name, "owner name not lowercase");
        if (rr.name.empty()) fuzz::fail("empty owner name", rr.rdata);
        check_printable(type_to_text(rr.type), "type_to_text");
        check_printable(class_to_text(rr.rclass), "class_to_text");
    }
    check_printable(type_to_text(m.qtype), "type_to_text");
    check_printable(class_to_text(m.qclass), "class_to_text");
    check_printable(rcode_to_text(m.rcode), "rcode_to_text");
    check_printable(opcode_to_text(m.opcode()), "opcode_to_text");
    const std::string flags = flags_to_text(m.flags);
    check_printable(flags, "flags_to_text");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size > 70000) return 0;
    const std::span<const std::uint8_t> wire(data, size);

    DnsMessage m;
    const bool ok = parse_dns(wire, m);
    check_message(m, wire, ok);

    // Same bytes again into a used message: the per-thread parser state must not leak.
    DnsMessage again = m;
    again.answers.emplace_back();
    again.qname = "left.over";
    if (parse_dns(wire, again) != ok || !same(m, again)) fuzz::fail("parse_dns is not deterministic", m.error);

    // The hand-written record paths against libknot alone.
    DnsMessage reference;
    if (dns_detail::parse_dns_with_libknot(wire, reference) != ok || !same(m, reference))
        fuzz::fail("parse_dns differs from parse_dns_with_libknot", m.error + " / " + reference.error);

    check_name_to_text(wire);

    // The message inside a dnstap message, as decode would hold it, through the formatters.
    DnstapMessage d;
    d.type = (size & 1) ? MessageType::client_response : MessageType::client_query;
    if (size & 1) d.response = std::move(m);
    else d.query = std::move(m);
    const std::string text = format_text(d);
    check_printable(text, "format_text");
    fuzz::check_json(format_json(d), "format_json");
    return 0;
}
