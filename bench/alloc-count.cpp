// alloc-count.so: an LD_PRELOAD library that counts heap allocations of a process, for
// bench/run's "alloc" part (allocations per frame in steady state).
//
//   LD_PRELOAD=build/bench/alloc-count.so ALLOC_COUNT_FILE=/tmp/c dnstap-collector serve ...
//
// It replaces malloc, calloc, realloc, reallocarray, free, memalign, posix_memalign,
// aligned_alloc, valloc and pvalloc by thin wrappers around glibc's exported __libc_*
// functions (no dlsym, so no recursion at startup) that bump relaxed atomic counters.
// operator new / new[] (also the aligned forms) of libstdc++ call malloc or aligned_alloc
// through the PLT, so they are counted there (bench/alloc-count-check verifies it).
//
// Environment:
//   ALLOC_COUNT_FILE=PATH       a thread started by the constructor rewrites PATH (write to
//                               PATH.tmp, rename) every interval and at exit with one line:
//                               "allocs=N bytes=N frees=N malloc=N calloc=N realloc=N
//                               memalign=N ms=N" (allocs = the four kinds; bytes = bytes
//                               requested; ms = CLOCK_MONOTONIC milliseconds of the sample).
//   ALLOC_COUNT_INTERVAL_MS=N   period of the rewrite (default 200).
//   ALLOC_COUNT_SAMPLE=N        optional: record the call stack of every Nth allocation of
//                               each thread while the file PATH.sample-on exists; when it is
//                               removed (or at exit), write the stacks seen in that window
//                               to PATH.stacks (format below). 0 or unset: no sampling.
//
// PATH.stacks: for each distinct stack, "stack COUNT BYTES" (sampled allocations, their
// bytes), then one line per frame, innermost first: "  exe 0xVADDR -" for the main program
// (link-time address, for addr2line -e), "  /path/lib.so 0xVADDR SYMBOL" for libraries
// (SYMBOL from the dynamic symbol table, "-" if none). Frames of this library are left out.
//
// The counter thread itself allocates nothing and is not counted.
#include <dlfcn.h>
#include <execinfo.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <malloc.h>

extern "C" {
void* __libc_malloc(std::size_t size);
void* __libc_calloc(std::size_t n, std::size_t size);
void* __libc_realloc(void* p, std::size_t size);
void __libc_free(void* p);
void* __libc_memalign(std::size_t alignment, std::size_t size);
}

namespace {

struct alignas(64) Counter {
    std::atomic<std::uint64_t> value{0};
    void add(std::uint64_t n) { value.fetch_add(n, std::memory_order_relaxed); }
    std::uint64_t get() const { return value.load(std::memory_order_relaxed); }
};

Counter c_malloc, c_calloc, c_realloc, c_memalign, c_bytes, c_frees;

// Per thread: inside our own code (backtrace may allocate), or the counter thread.
thread_local bool t_busy __attribute__((tls_model("initial-exec"))) = false;
thread_local std::uint32_t t_tick __attribute__((tls_model("initial-exec"))) = 0;

// ---------------------------------------------------------------------------------------
// Sampled stacks
constexpr int kDepth = 20;
constexpr std::size_t kStacks = 4096;  // power of two
struct Stack {
    std::uint64_t hash;
    std::uint64_t count;
    std::uint64_t bytes;
    int depth;
    void* pc[kDepth];
};
Stack g_stacks[kStacks];
std::atomic_flag g_stacks_lock = ATOMIC_FLAG_INIT;
std::uint64_t g_stacks_lost = 0;
std::uint32_t g_sample_every = 0;
std::atomic<bool> g_sampling{false};

void lock_stacks() {
    while (g_stacks_lock.test_and_set(std::memory_order_acquire)) {
    }
}
void unlock_stacks() { g_stacks_lock.clear(std::memory_order_release); }

__attribute__((noinline)) void sample(std::size_t bytes) {
    t_busy = true;
    void* pc[kDepth];
    const int depth = ::backtrace(pc, kDepth);
    std::uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < depth; ++i) h = (h ^ reinterpret_cast<std::uintptr_t>(pc[i])) * 1099511628211ULL;
    if (h == 0) h = 1;
    lock_stacks();
    std::size_t i = h & (kStacks - 1);
    for (std::size_t probes = 0;; ++probes, i = (i + 1) & (kStacks - 1)) {
        Stack& s = g_stacks[i];
        if (probes == kStacks) {
            ++g_stacks_lost;
            break;
        }
        if (s.hash == 0) {
            s.hash = h;
            s.depth = depth;
            std::memcpy(s.pc, pc, sizeof(void*) * static_cast<std::size_t>(depth));
        }
        if (s.hash == h && s.depth == depth && std::memcmp(s.pc, pc, sizeof(void*) * static_cast<std::size_t>(depth)) == 0) {
            ++s.count;
            s.bytes += bytes;
            break;
        }
    }
    unlock_stacks();
    t_busy = false;
}

inline void count(Counter& kind, std::size_t bytes) {
    kind.add(1);
    c_bytes.add(bytes);
    if (g_sample_every && !t_busy && g_sampling.load(std::memory_order_relaxed) && ++t_tick >= g_sample_every) {
        t_tick = 0;
        sample(bytes);
    }
}

// ---------------------------------------------------------------------------------------
// Output without allocating: a fixed buffer and hand-written number formatting.
struct Buffer {
    char data[8192];
    std::size_t used = 0;
    int fd = -1;
    void flush() {
        std::size_t off = 0;
        while (fd >= 0 && off < used) {
            const ssize_t n = ::write(fd, data + off, used - off);
            if (n <= 0 && errno != EINTR) break;
            if (n > 0) off += static_cast<std::size_t>(n);
        }
        used = 0;
    }
    void put(const char* s) {
        for (; *s; ++s) {
            if (used == sizeof data) flush();
            data[used++] = *s;
        }
    }
    void num(std::uint64_t v, int base = 10) {
        char tmp[24];
        int n = 0;
        do {
            tmp[n++] = "0123456789abcdef"[v % static_cast<unsigned>(base)];
            v /= static_cast<unsigned>(base);
        } while (v);
        char out[26];
        int k = 0;
        if (base == 16) {
            out[k++] = '0';
            out[k++] = 'x';
        }
        while (n) out[k++] = tmp[--n];
        out[k] = 0;
        put(out);
    }
};

char g_path[4096], g_tmp[4200], g_gate[4200], g_stacks_path[4200], g_stacks_tmp[4300];
pthread_mutex_t g_write_mutex = PTHREAD_MUTEX_INITIALIZER;
unsigned g_interval_ms = 200;
std::atomic<bool> g_exiting{false};

std::uint64_t now_ms() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000 + static_cast<std::uint64_t>(ts.tv_nsec) / 1000000;
}

void write_counts() {
    if (!g_path[0]) return;
    pthread_mutex_lock(&g_write_mutex);
    Buffer b;
    b.fd = ::open(g_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (b.fd >= 0) {
        const std::uint64_t m = c_malloc.get(), c = c_calloc.get(), r = c_realloc.get(), a = c_memalign.get();
        b.put("allocs="), b.num(m + c + r + a);
        b.put(" bytes="), b.num(c_bytes.get());
        b.put(" frees="), b.num(c_frees.get());
        b.put(" malloc="), b.num(m);
        b.put(" calloc="), b.num(c);
        b.put(" realloc="), b.num(r);
        b.put(" memalign="), b.num(a);
        b.put(" ms="), b.num(now_ms());
        b.put("\n");
        b.flush();
        ::close(b.fd);
        ::rename(g_tmp, g_path);
    }
    pthread_mutex_unlock(&g_write_mutex);
}

// Loaded objects, for turning return addresses into (object, link-time address).
struct Module {
    std::uintptr_t begin, end, bias;
    const char* name;  // "" for the main program
};
Module g_modules[512];
int g_module_count = 0;

int collect_module(dl_phdr_info* info, std::size_t, void*) {
    if (g_module_count == 512) return 1;
    std::uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const auto& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_LOAD) continue;
        const std::uintptr_t b = info->dlpi_addr + ph.p_vaddr;
        if (b < lo) lo = b;
        if (b + ph.p_memsz > hi) hi = b + ph.p_memsz;
    }
    if (lo < hi) g_modules[g_module_count++] = Module{lo, hi, info->dlpi_addr, info->dlpi_name ? info->dlpi_name : ""};
    return 0;
}

void write_stacks() {
    if (!g_path[0] || !g_sample_every) return;
    pthread_mutex_lock(&g_write_mutex);
    g_module_count = 0;
    ::dl_iterate_phdr(collect_module, nullptr);
    Dl_info self{};
    ::dladdr(reinterpret_cast<void*>(&write_stacks), &self);
    Buffer b;
    b.fd = ::open(g_stacks_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    lock_stacks();
    if (b.fd >= 0) {
        b.put("# every "), b.num(g_sample_every), b.put("th allocation of each thread; stacks lost (table full): ");
        b.num(g_stacks_lost), b.put("\n");
        for (const Stack& s : g_stacks) {
            if (!s.hash || !s.count) continue;
            b.put("stack "), b.num(s.count), b.put(" "), b.num(s.bytes), b.put("\n");
            for (int i = 0; i < s.depth; ++i) {
                // Return addresses point after the call: -1 lands inside the call instruction.
                const std::uintptr_t pc = reinterpret_cast<std::uintptr_t>(s.pc[i]) - (i ? 1 : 0);
                const Module* mod = nullptr;
                for (int k = 0; k < g_module_count; ++k)
                    if (pc >= g_modules[k].begin && pc < g_modules[k].end) mod = &g_modules[k];
                Dl_info info{};
                const bool found = ::dladdr(reinterpret_cast<void*>(pc), &info) != 0;
                if (found && info.dli_fbase == self.dli_fbase) continue;  // this library
                b.put("  ");
                if (!mod) {
                    b.put("? "), b.num(pc, 16), b.put(" -\n");
                    continue;
                }
                b.put(mod->name[0] ? mod->name : "exe");
                b.put(" "), b.num(pc - mod->bias, 16), b.put(" ");
                b.put(found && info.dli_sname && mod->name[0] ? info.dli_sname : "-");
                b.put("\n");
            }
        }
        b.flush();
        ::close(b.fd);
        ::rename(g_stacks_tmp, g_stacks_path);
    }
    unlock_stacks();
    pthread_mutex_unlock(&g_write_mutex);
}

void clear_stacks() {
    lock_stacks();
    std::memset(static_cast<void*>(g_stacks), 0, sizeof g_stacks);
    g_stacks_lost = 0;
    unlock_stacks();
}

void* counter_thread(void*) {
    t_busy = true;
    struct stat st {};
    for (;;) {
        timespec ts{static_cast<time_t>(g_interval_ms / 1000), static_cast<long>(g_interval_ms % 1000) * 1000000L};
        ::nanosleep(&ts, nullptr);
        if (g_exiting.load()) break;
        write_counts();
        if (g_sample_every) {
            const bool gate = ::stat(g_gate, &st) == 0;
            if (gate && !g_sampling.load()) {
                clear_stacks();
                g_sampling.store(true);
            } else if (!gate && g_sampling.load()) {
                g_sampling.store(false);
                write_stacks();
            }
        }
    }
    return nullptr;
}

void copy_path(char* dst, std::size_t cap, const char* a, const char* b) {
    const std::size_t la = std::strlen(a), lb = std::strlen(b);
    if (la + lb + 1 > cap) {
        dst[0] = 0;
        return;
    }
    std::memcpy(dst, a, la);
    std::memcpy(dst + la, b, lb + 1);
}

__attribute__((constructor)) void start() {
    t_busy = true;
    const char* path = std::getenv("ALLOC_COUNT_FILE");
    if (const char* ms = std::getenv("ALLOC_COUNT_INTERVAL_MS")) {
        const long v = std::strtol(ms, nullptr, 10);
        if (v > 0 && v < 100000) g_interval_ms = static_cast<unsigned>(v);
    }
    if (path && *path && std::strlen(path) < sizeof g_path) {
        copy_path(g_path, sizeof g_path, path, "");
        copy_path(g_tmp, sizeof g_tmp, path, ".tmp");
        copy_path(g_gate, sizeof g_gate, path, ".sample-on");
        copy_path(g_stacks_path, sizeof g_stacks_path, path, ".stacks");
        copy_path(g_stacks_tmp, sizeof g_stacks_tmp, path, ".stacks.tmp");
        if (const char* n = std::getenv("ALLOC_COUNT_SAMPLE")) {
            const long v = std::strtol(n, nullptr, 10);
            if (v > 0) {
                void* warm[4];
                ::backtrace(warm, 4);  // loads libgcc_s now, not inside some malloc later
                g_sample_every = static_cast<std::uint32_t>(v);
            }
        }
        write_counts();
        pthread_t thread;
        if (::pthread_create(&thread, nullptr, counter_thread, nullptr) == 0) ::pthread_detach(thread);
    }
    t_busy = false;
}

__attribute__((destructor)) void finish() {
    g_exiting.store(true);
    write_counts();
    if (g_sampling.load()) {
        g_sampling.store(false);
        write_stacks();
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// The replaced functions.
extern "C" {

// Read by bench/alloc-count-check through dlsym: allocs, bytes, frees, malloc, calloc,
// realloc, memalign.
__attribute__((visibility("default"))) void alloc_count_snapshot(std::uint64_t out[7]) {
    out[0] = c_malloc.get() + c_calloc.get() + c_realloc.get() + c_memalign.get();
    out[1] = c_bytes.get();
    out[2] = c_frees.get();
    out[3] = c_malloc.get();
    out[4] = c_calloc.get();
    out[5] = c_realloc.get();
    out[6] = c_memalign.get();
}

void* malloc(std::size_t size) noexcept {
    count(c_malloc, size);
    return __libc_malloc(size);
}

void* calloc(std::size_t n, std::size_t size) noexcept {
    count(c_calloc, n * size);
    return __libc_calloc(n, size);
}

void* realloc(void* p, std::size_t size) noexcept {
    if (p && size == 0) {
        c_frees.add(1);
    } else {
        count(c_realloc, size);
    }
    return __libc_realloc(p, size);
}

void* reallocarray(void* p, std::size_t n, std::size_t size) noexcept {
    std::size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes)) {
        errno = ENOMEM;
        return nullptr;
    }
    return realloc(p, bytes);
}

void free(void* p) noexcept {
    if (p) c_frees.add(1);
    __libc_free(p);
}

void* memalign(std::size_t alignment, std::size_t size) noexcept {
    count(c_memalign, size);
    return __libc_memalign(alignment, size);
}

void* aligned_alloc(std::size_t alignment, std::size_t size) noexcept {
    count(c_memalign, size);
    return __libc_memalign(alignment, size);
}

int posix_memalign(void** out, std::size_t alignment, std::size_t size) noexcept {
    if (alignment % sizeof(void*) != 0 || (alignment & (alignment - 1)) != 0 || alignment == 0) return EINVAL;
    count(c_memalign, size);
    void* p = __libc_memalign(alignment, size);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

void* valloc(std::size_t size) noexcept {
    count(c_memalign, size);
    return __libc_memalign(static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)), size);
}

void* pvalloc(std::size_t size) noexcept {
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t rounded = size ? (size + page - 1) & ~(page - 1) : page;
    count(c_memalign, rounded);
    return __libc_memalign(page, rounded);
}

}  // extern "C"
