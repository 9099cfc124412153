#include "dnstap_collector/pipeline.hpp"

#include <algorithm>

#include <gnutls/crypto.h>

#include "dnstap_collector/dns.hpp"

namespace dnstap_collector {

namespace {

void truncate(IpAddress& a, int prefix) {
    for (int bit = prefix; bit < a.length * 8; ++bit) a.bytes[bit / 8] &= static_cast<std::uint8_t>(~(0x80u >> (bit % 8)));
}

bool under(const std::string& name, const std::string& suffix) {
    if (suffix == ".") return true;
    return name == suffix ||
           (name.size() > suffix.size() && name.ends_with(suffix) && name[name.size() - suffix.size() - 1] == '.');
}

}  // namespace

Privacy::Privacy(PrivacyOptions options) : options_(std::move(options)) {
    for (auto& n : options_.exclude_names) {
        n = lowercase_name(n);
        if (n.size() > 1 && n.back() == '.') n.pop_back();
    }
}

bool Privacy::apply(Exchange& e) const {
    const DnstapMessage& first = e.any();
    if (!options_.exclude_kinds.empty() &&
        std::find(options_.exclude_kinds.begin(), options_.exclude_kinds.end(), kind_of(first.type)) !=
            options_.exclude_kinds.end())
        return false;
    if (!options_.exclude_names.empty()) {
        if (const DnsMessage* dns = first.primary(); dns && dns->has_question) {
            const std::string name = lowercase_name(dns->qname);
            for (const auto& suffix : options_.exclude_names)
                if (under(name, suffix)) return false;
        }
    }
    if (e.query) protect(e.query->query_address);
    if (e.response) protect(e.response->query_address);
    return true;
}

void Privacy::protect(IpAddress& client) const {
    if (client.empty()) return;
    if (!options_.hash_key.empty()) {
        // Keyed, so nobody without the key can test guesses; same client, same pseudonym, so
        // "what else did this client ask" still works. The result stays an address of the same
        // family, so the inet column and its operators keep working.
        std::uint8_t digest[32];
        if (gnutls_hmac_fast(GNUTLS_MAC_SHA256, options_.hash_key.data(), options_.hash_key.size(), client.bytes.data(),
                             client.length, digest) == 0)
            std::copy_n(digest, client.length, client.bytes.begin());
        else
            client = IpAddress{};  // never store the real address when hashing was asked for
    }
    truncate(client, client.length == 4 ? options_.client_prefix_v4 : options_.client_prefix_v6);
}

}  // namespace dnstap_collector
