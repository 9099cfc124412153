#include "dnstap_collector/sinks.hpp"

namespace dnstap_collector {

void SinkSet::consume(std::vector<Exchange>&& batch) {
    // The last sink takes ownership; the others get copies (tail is rare, PostgreSQL is last).
    for (std::size_t i = 0; i + 1 < sinks_.size(); ++i) sinks_[i]->consume(std::vector<Exchange>(batch));
    if (!sinks_.empty()) sinks_.back()->consume(std::move(batch));
}

}  // namespace dnstap_collector
