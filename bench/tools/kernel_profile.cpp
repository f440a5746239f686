// kernel_profile: a per-kernel GPU time table for any CUDA program, through CUPTI's activity API
// (the same records Nsight Systems and the PyTorch profiler read), for machines without nsys.
// Build it as a shared library and preload it:
//   DSEEK_KPROF=table.md LD_PRELOAD=$BUILD/libkernel_profile.so $BUILD/bench_train_cuda ...
// At exit it writes one row per kernel name (demangled, template arguments kept): launches, total
// GPU ms, mean µs and share of all kernel time, sorted by total, plus memcpy/memset totals.
// DSEEK_KPROF unset: the table goes to stderr. Kernel times only (no CPU gaps): the sum can be
// less than the wall time when the GPU idles between launches, which the last line reports.
// DSEEK_KPROF_TRACE=trace.csv also writes every kernel as a line `start_ns,end_ns,stream,name`
// (times relative to the first kernel), to see what overlaps what.
#include <cuda.h>
#include <cupti.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Entry {
  uint64_t count = 0, ns = 0;
};

std::mutex g_mutex;
std::map<std::string, Entry> g_kernels;
struct Span {
  uint64_t start, end;
  uint32_t stream;
  const std::string* name;  // a key of g_kernels (stable)
};
std::vector<Span> g_spans;
const bool g_trace = std::getenv("DSEEK_KPROF_TRACE") != nullptr;
uint64_t g_copy_ns = 0, g_copy_bytes = 0, g_set_ns = 0, g_first = UINT64_MAX, g_last = 0;

constexpr size_t kBufferBytes = 8 << 20;

void write_table();

// The table is written from an atexit handler registered at the first CUDA activity, that is
// after the CUDA runtime initialised: handlers run in reverse order, so it runs before the
// runtime's own teardown while the records can still be flushed.
void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  static std::once_flag once;
  std::call_once(once, [] { std::atexit(write_table); });
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;
}

std::string demangle(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string out = status == 0 && d ? d : name;
  std::free(d);
  return out;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  std::lock_guard<std::mutex> lock(g_mutex);
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL ||
        record->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel9*>(record);
      const auto it = g_kernels.try_emplace(demangle(k->name)).first;
      Entry& e = it->second;
      if (g_trace) g_spans.push_back({k->start, k->end, k->streamId, &it->first});
      ++e.count;
      e.ns += k->end - k->start;
      g_first = std::min<uint64_t>(g_first, k->start);
      g_last = std::max<uint64_t>(g_last, k->end);
    } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy5*>(record);
      g_copy_ns += m->end - m->start;
      g_copy_bytes += m->bytes;
    } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(record);
      g_set_ns += m->end - m->start;
    }
  }
  std::free(buffer);
}

void write_table() {
  cuptiActivityFlushAll(1);
  std::lock_guard<std::mutex> lock(g_mutex);
  const char* path = std::getenv("DSEEK_KPROF");
  FILE* out = path && *path ? std::fopen(path, "w") : stderr;
  if (!out) out = stderr;
  std::vector<std::pair<std::string, Entry>> rows(g_kernels.begin(), g_kernels.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  uint64_t total = 0;
  for (const auto& r : rows) total += r.second.ns;
  std::fprintf(
      out, "| kernel | launches | total ms | mean us | share |\n| --- | --- | --- | --- | --- |\n");
  for (const auto& [name, e] : rows) {
    std::string shown = name.size() > 140 ? name.substr(0, 137) + "..." : name;
    for (char& c : shown)
      if (c == '|') c = '/';
    std::fprintf(out, "| %s | %llu | %.3f | %.1f | %.1f%% |\n", shown.c_str(),
                 (unsigned long long)e.count, e.ns / 1e6, e.ns / 1e3 / double(e.count),
                 total ? 100.0 * double(e.ns) / double(total) : 0.0);
  }
  std::fprintf(out,
               "\nkernels %.3f ms in all; memcpy %.3f ms (%.3f GB); memset %.3f ms; span of "
               "kernel activity %.3f ms\n",
               total / 1e6, g_copy_ns / 1e6, g_copy_bytes / 1e9, g_set_ns / 1e6,
               g_last > g_first ? (g_last - g_first) / 1e6 : 0.0);
  if (out != stderr) std::fclose(out);
  if (FILE* trace = g_trace ? std::fopen(std::getenv("DSEEK_KPROF_TRACE"), "w") : nullptr) {
    std::sort(g_spans.begin(), g_spans.end(),
              [](const Span& a, const Span& b) { return a.start < b.start; });
    for (const Span& s : g_spans) {
      std::string n = *s.name;
      for (size_t at; (at = n.find("(anonymous namespace)::")) != std::string::npos;)
        n.erase(at, 23);
      const size_t paren = n.find('(');
      std::string shown = n.substr(0, std::min<size_t>(paren, 100));
      for (char& c : shown)
        if (c == ',') c = ';';
      std::fprintf(trace, "%llu,%llu,%u,%s\n", (unsigned long long)(s.start - g_first),
                   (unsigned long long)(s.end - g_first), s.stream, shown.c_str());
    }
    std::fclose(trace);
  }
}

struct Profiler {
  Profiler() {
    if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
      std::fprintf(stderr, "kernel_profile: CUPTI activity API unavailable, no table\n");
      return;
    }
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
  }
};

Profiler g_profiler;

}  // namespace
