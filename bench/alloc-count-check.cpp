// alloc-count-check: self-test of bench/alloc-count.so, run by bench/run before it trusts
// the counter (a broken counter must not report "0 allocations per frame").
//
//   LD_PRELOAD=build/bench/alloc-count.so ALLOC_COUNT_FILE=/tmp/c build/bench/alloc-count-check
//
// Makes a known number of allocations of each kind (malloc, calloc, realloc, posix_memalign,
// aligned_alloc, memalign, operator new, aligned operator new, std::string growth) and from
// two threads at once, and checks the exact deltas of the counters (read through the
// library's alloc_count_snapshot), then that ALLOC_COUNT_FILE catches up with them.
// Exit status 0 and "alloc-count-check: ok" when everything matches.
#include <dlfcn.h>
#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <sstream>
#include <string>
#include <thread>

namespace {

using Snapshot = void (*)(std::uint64_t*);
Snapshot snapshot_fn = nullptr;

struct Counts {
    std::uint64_t allocs = 0, bytes = 0, frees = 0, malloc = 0, calloc = 0, realloc = 0, memalign = 0;
};

Counts snap() {
    std::uint64_t v[7] = {};
    snapshot_fn(v);
    return Counts{v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
}

// Keep the compiler from proving an allocation unused and removing it.
inline void escape(void* p) { asm volatile("" : : "g"(p) : "memory"); }

constexpr int kN = 1000;
void* g_ptrs[kN];
int g_failures = 0;
std::string g_report;

void expect(const char* what, std::uint64_t got, std::uint64_t want_min, std::uint64_t want_max) {
    char line[200];
    const bool ok = got >= want_min && got <= want_max;
    if (want_min == want_max)
        std::snprintf(line, sizeof line, "  %-40s %10llu (want %llu)%s\n", what, static_cast<unsigned long long>(got),
                      static_cast<unsigned long long>(want_min), ok ? "" : "  FAILED");
    else
        std::snprintf(line, sizeof line, "  %-40s %10llu (want %llu..%llu)%s\n", what, static_cast<unsigned long long>(got),
                      static_cast<unsigned long long>(want_min), static_cast<unsigned long long>(want_max),
                      ok ? "" : "  FAILED");
    g_report += line;
    if (!ok) ++g_failures;
}

template <typename Alloc, typename Release>
Counts run(Alloc alloc, Release release) {
    const Counts before = snap();
    for (int i = 0; i < kN; ++i) {
        g_ptrs[i] = alloc(i);
        escape(g_ptrs[i]);
    }
    for (int i = 0; i < kN; ++i) release(g_ptrs[i]);
    const Counts after = snap();
    return Counts{after.allocs - before.allocs, after.bytes - before.bytes,     after.frees - before.frees,
                  after.malloc - before.malloc, after.calloc - before.calloc, after.realloc - before.realloc,
                  after.memalign - before.memalign};
}

}  // namespace

int main() {
    snapshot_fn = reinterpret_cast<Snapshot>(::dlsym(RTLD_DEFAULT, "alloc_count_snapshot"));
    if (!snapshot_fn) {
        std::fprintf(stderr, "alloc-count-check: alloc-count.so is not preloaded (LD_PRELOAD)\n");
        return 2;
    }
    g_report.reserve(1 << 16);  // no allocation by the report while counting
    const std::uint64_t n = kN;

    Counts d = run([](int) { return std::malloc(100); }, [](void* p) { std::free(p); });
    expect("malloc(100): malloc calls", d.malloc, n, n);
    expect("malloc(100): allocs", d.allocs, n, n);
    expect("malloc(100): bytes", d.bytes, 100 * n, 100 * n);
    expect("malloc(100): frees", d.frees, n, n);

    d = run([](int) { return std::calloc(3, 8); }, [](void* p) { std::free(p); });
    expect("calloc(3, 8): calloc calls", d.calloc, n, n);
    expect("calloc(3, 8): bytes", d.bytes, 24 * n, 24 * n);

    d = run(
        [](int) {
            void* p = std::malloc(16);
            escape(p);
            return std::realloc(p, 4096);
        },
        [](void* p) { std::free(p); });
    expect("malloc(16) + realloc(4096): allocs", d.allocs, 2 * n, 2 * n);
    expect("  realloc calls", d.realloc, n, n);
    expect("  bytes", d.bytes, (16 + 4096) * n, (16 + 4096) * n);

    d = run(
        [](int i) -> void* {
            void* p = nullptr;
            switch (i % 3) {
                case 0: if (::posix_memalign(&p, 64, 128) != 0) p = nullptr; break;
                case 1: p = std::aligned_alloc(64, 128); break;
                default: p = ::memalign(64, 128); break;
            }
            return p;
        },
        [](void* p) { std::free(p); });
    expect("posix_memalign/aligned_alloc/memalign", d.memalign, n, n);
    expect("  bytes", d.bytes, 128 * n, 128 * n);

    d = run([](int) { return ::operator new(48); }, [](void* p) { ::operator delete(p); });
    expect("operator new(48): allocs (via malloc)", d.malloc, n, n);
    expect("  frees", d.frees, n, n);

    d = run([](int) { return ::operator new(48, std::align_val_t(64)); },
            [](void* p) { ::operator delete(p, std::align_val_t(64)); });
    expect("operator new(48, align 64): allocs", d.allocs, n, n);

    d = run(
        [](int) -> void* {
            auto* s = new std::string(200, 'x');  // the object, then its buffer
            escape(s->data());
            return s;
        },
        [](void* p) { delete static_cast<std::string*>(p); });
    expect("new std::string(200 chars): allocs", d.allocs, 2 * n, 2 * n);

    // Two threads at once: no count lost (plus a few allocations by std::thread itself).
    constexpr std::uint64_t per_thread = 200000;
    const Counts t0 = snap();
    auto worker = [] {
        for (std::uint64_t i = 0; i < per_thread; ++i) {
            void* p = std::malloc(32);
            escape(p);
            std::free(p);
        }
    };
    std::thread a(worker), b(worker);
    a.join();
    b.join();
    const Counts t1 = snap();
    expect("2 threads x 200000 malloc: allocs", t1.allocs - t0.allocs, 2 * per_thread, 2 * per_thread + 16);
    expect("2 threads x 200000 malloc: frees", t1.frees - t0.frees, 2 * per_thread, 2 * per_thread + 16);

    // ALLOC_COUNT_FILE (what bench/run reads) reaches these totals within a few periods.
    const char* path = std::getenv("ALLOC_COUNT_FILE");
    if (path && *path) {
        const std::uint64_t want = snap().allocs;
        std::uint64_t seen = 0;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (std::chrono::steady_clock::now() < deadline) {
            std::ifstream in(path);
            std::string line;
            if (std::getline(in, line)) {
                const auto at = line.find("allocs=");
                if (at != std::string::npos) seen = std::strtoull(line.c_str() + at + 7, nullptr, 10);
                if (seen >= want && line.find(" bytes=") != std::string::npos && line.find(" frees=") != std::string::npos)
                    break;
            }
            ::usleep(20000);
        }
        expect("ALLOC_COUNT_FILE allocs >= counted", seen >= want ? 1 : 0, 1, 1);
    } else {
        g_report += "  (ALLOC_COUNT_FILE not set: file output not checked)\n";
    }

    std::fputs(g_report.c_str(), stdout);
    if (g_failures) {
        std::printf("alloc-count-check: FAILED (%d checks)\n", g_failures);
        return 1;
    }
    std::printf("alloc-count-check: ok\n");
    return 0;
}
