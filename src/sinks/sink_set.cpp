#include "dnstap_collector/sinks.hpp"

namespace dnstap_collector {

void SinkSet::consume(std::vector<Exchange>&& batch) {
    // The last active sink takes ownership; the others get copies (only while a tail is
    // attached, as PostgreSQL is added last).
    ExchangeSink* last = nullptr;
    for (ExchangeSink* sink : sinks_) {
        if (!sink->active()) continue;
        if (last) {
            std::vector<Exchange> copy;
            copy.reserve(batch.size());
            for (const Exchange& e : batch) copy.push_back(e.clone());
            last->consume(std::move(copy));
        }
        last = sink;
    }
    if (last) last->consume(std::move(batch));
}

}  // namespace dnstap_collector
