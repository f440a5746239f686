// dseek's CUDA runtime (see core/cuda.h): one device (0 unless select_device chose another), one
// non-blocking stream, and allocation from
// the device's default memory pool with an unlimited release threshold, so memory freed by one op
// is reused by the next without going back to the driver.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string_view>

#include "core/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/env.h"

namespace dseek::cuda {

namespace {

struct Runtime {
  bool present = false;
  std::string description;
  cudaStream_t stream = nullptr;
};

std::string gib(size_t bytes) {
  return fmt::format("{:.1f} GiB", double(bytes) / double(1ull << 30));
}

// The streams' priorities: the background stream has the lowest (with it above the main stream
// instead, a V2-Lite training step took 67.2 against 66.1 ms: docs/BENCHMARKS.md, run S), the
// main stream and a Fork's side stream the one above it. Lower numbers are higher priorities; a
// device with one level gives both 0.
struct StreamPriorities {
  int main, background;
};
StreamPriorities stream_priorities() {
  int least = 0, greatest = 0;
  DSEEK_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  return {least > greatest ? least - 1 : least, least};
}

// The device select_device chose; read once, when the runtime starts.
std::atomic<int> g_ordinal{0};
std::atomic<bool> g_started{false};

Runtime& runtime() {
  static Runtime rt = [] {
    g_started = true;
    const int ordinal = g_ordinal.load();
    Runtime r;
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess || count == 0) {
      r.description = status != cudaSuccess
                          ? fmt::format("no CUDA device ({})", cudaGetErrorString(status))
                          : std::string("no CUDA device");
      cudaGetLastError();  // clear the sticky-free error so later queries start clean
      return r;
    }
    if (ordinal >= count) {
      r.description = fmt::format("no CUDA device {} ({} present)", ordinal, count);
      return r;
    }
    DSEEK_CUDA_CHECK(cudaSetDevice(ordinal));
    cudaDeviceProp prop{};
    DSEEK_CUDA_CHECK(cudaGetDeviceProperties(&prop, ordinal));
    int runtime_version = 0;
    DSEEK_CUDA_CHECK(cudaRuntimeGetVersion(&runtime_version));
    r.description =
        fmt::format("{} (sm_{}{}, {}, CUDA runtime {}.{}{})", prop.name, prop.major, prop.minor,
                    gib(prop.totalGlobalMem), runtime_version / 1000, (runtime_version % 1000) / 10,
                    count > 1 ? fmt::format(", device {} of {}", ordinal, count) : "");
    cudaMemPool_t pool;
    DSEEK_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, ordinal));
    uint64_t keep_everything = UINT64_MAX;
    DSEEK_CUDA_CHECK(
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_everything));
    // One step above the lowest priority, so that background work (cuda::Background, on a
    // stream of the lowest) only takes the SMs the main stream's kernels leave.
    DSEEK_CUDA_CHECK(
        cudaStreamCreateWithPriority(&r.stream, cudaStreamNonBlocking, stream_priorities().main));
    r.present = true;
    return r;
  }();
  return rt;
}

Runtime& ready() {
  Runtime& r = runtime();
  if (!r.present) fail("[cuda] {}", r.description);
  return r;
}

}  // namespace

void raise_error(cudaError_t status, const char* call, const char* file, int line) {
  fail("[cuda] {}: {} ({}:{})", call, cudaGetErrorString(status), file, line);
}

int device_attribute(cudaDeviceAttr attr) {
  int device = 0, v = 0;
  DSEEK_CUDA_CHECK(cudaGetDevice(&device));
  DSEEK_CUDA_CHECK(cudaDeviceGetAttribute(&v, attr, device));
  return v;
}

namespace {

// A thread's second stream and the two events that order it against the main one (Fork). Reusing
// the events is safe: a wait takes the event's state at the time it is enqueued (or, under graph
// capture, becomes an edge), and forks do not nest.
struct SideStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t forked = nullptr, joined = nullptr;
  SideStream() {
    // On dseek's device, whichever thread forks first (a thread starts on device 0).
    DSEEK_CUDA_CHECK(cudaSetDevice(g_ordinal.load()));
    DSEEK_CUDA_CHECK(
        cudaStreamCreateWithPriority(&stream, cudaStreamNonBlocking, stream_priorities().main));
    DSEEK_CUDA_CHECK(cudaEventCreateWithFlags(&forked, cudaEventDisableTiming));
    DSEEK_CUDA_CHECK(cudaEventCreateWithFlags(&joined, cudaEventDisableTiming));
  }
  // Kept until exit on purpose: destroying streams from a thread-exit destructor could run after
  // the runtime's teardown.
};

SideStream& side_stream() {
  thread_local SideStream* side = new SideStream();
  return *side;
}

thread_local bool t_forked = false;             // a Fork of this thread is active
thread_local cudaStream_t t_current = nullptr;  // inside a Fork::Side scope: the side stream

std::atomic<bool>& branches_switch() {
  static std::atomic<bool> on = [] { return !env_is("DSEEK_BRANCHES", "0"); }();
  return on;
}

}  // namespace

cudaStream_t stream() {
  return t_current ? t_current : ready().stream;
}

bool branches_enabled() {
  return branches_switch().load();
}
bool on_side_stream() {
  return t_current != nullptr;
}
void set_branches_enabled(bool on) {
  branches_switch().store(on);
}

Fork::Fork(bool enabled) {
  if (!enabled || !available()) return;
  DSEEK_CHECK(!t_forked, "[cuda] forks do not nest");
  SideStream& side = side_stream();
  DSEEK_CUDA_CHECK(cudaEventRecord(side.forked, ready().stream));
  DSEEK_CUDA_CHECK(cudaStreamWaitEvent(side.stream, side.forked, 0));
  t_forked = active_ = true;
}

Fork::~Fork() {
  if (!active_) return;
  // An exception unwinding through the fork: the main stream still waits for the side, so no
  // later work overtakes it (a failure here has nothing better to do than to stop).
  t_current = nullptr;
  SideStream& side = side_stream();
  cudaEventRecord(side.joined, side.stream);
  cudaStreamWaitEvent(ready().stream, side.joined, 0);
  t_forked = false;
}

void Fork::join() {
  if (!active_) return;
  DSEEK_CHECK(!t_current, "[cuda] Fork::join inside a Side scope");
  SideStream& side = side_stream();
  DSEEK_CUDA_CHECK(cudaEventRecord(side.joined, side.stream));
  DSEEK_CUDA_CHECK(cudaStreamWaitEvent(ready().stream, side.joined, 0));
  t_forked = active_ = false;
}

Fork::Side::Side(Fork& fork) {
  if (!fork.enabled()) return;
  DSEEK_CHECK(!t_current, "[cuda] Fork::Side scopes do not nest");
  t_current = side_stream().stream;
  switched_ = true;
}

Fork::Side::~Side() {
  if (switched_) t_current = nullptr;
}

namespace {

// The background stream (lowest priority) and its marks' events, one set for the process (the
// main stream is one for the process too). A mark's event is reused kMarkEvents marks later.
constexpr uint64_t kMarkEvents = 64;
struct BackgroundStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t started = nullptr;
  cudaEvent_t marks[kMarkEvents] = {};
  uint64_t next_mark = 1;  // 0 is "no mark"
  std::mutex mutex;
  BackgroundStream() {
    ready();
    DSEEK_CUDA_CHECK(cudaSetDevice(g_ordinal.load()));
    DSEEK_CUDA_CHECK(cudaStreamCreateWithPriority(&stream, cudaStreamNonBlocking,
                                                  stream_priorities().background));
    DSEEK_CUDA_CHECK(cudaEventCreateWithFlags(&started, cudaEventDisableTiming));
    for (cudaEvent_t& e : marks)
      DSEEK_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  // Kept until exit, as the side streams are.
};

BackgroundStream& background_stream() {
  static BackgroundStream* bg = new BackgroundStream();
  return *bg;
}

thread_local bool t_background = false;

}  // namespace

Background::Background() {
  DSEEK_CHECK(!t_current, "[cuda] a Background scope inside a Fork::Side or another Background");
  BackgroundStream& bg = background_stream();
  DSEEK_CUDA_CHECK(cudaEventRecord(bg.started, ready().stream));
  DSEEK_CUDA_CHECK(cudaStreamWaitEvent(bg.stream, bg.started, 0));
  t_current = bg.stream;
  t_background = true;
}

Background::~Background() {
  t_current = nullptr;
  t_background = false;
}

uint64_t Background::mark() {
  BackgroundStream& bg = background_stream();
  std::lock_guard<std::mutex> lock(bg.mutex);
  const uint64_t m = bg.next_mark++;
  DSEEK_CUDA_CHECK(cudaEventRecord(bg.marks[m % kMarkEvents], bg.stream));
  return m;
}

// keep_sms_for_background's state: SMs kept until the main stream has waited for mark
// g_kept_until (g_main_waited: the latest mark it waited for).
std::atomic<int> g_kept_sms{0};
std::atomic<uint64_t> g_kept_until{0}, g_main_waited{0};

void wait_background(uint64_t mark) {
  if (mark == 0) return;
  BackgroundStream& bg = background_stream();
  std::lock_guard<std::mutex> lock(bg.mutex);
  DSEEK_CHECK(mark < bg.next_mark, "[cuda] wait_background: mark {} was never made", mark);
  // An event re-recorded by a later mark marks a later point of the same stream: waiting for it
  // also waits past this mark.
  DSEEK_CUDA_CHECK(cudaStreamWaitEvent(stream(), bg.marks[mark % kMarkEvents], 0));
  if (!t_current && mark > g_main_waited.load()) g_main_waited.store(mark);
}

void keep_sms_for_background(int sms, uint64_t until) {
  g_kept_sms.store(std::max(sms, 0));
  g_kept_until.store(until);
}

int compute_sms() {
  const int all = multiprocessors(), kept = g_kept_sms.load();
  if (kept == 0 || g_main_waited.load() >= g_kept_until.load()) return all;
  return std::max(1, all - kept);
}

namespace {

std::atomic<bool>& pdl_switch() {
  static std::atomic<bool> on = [] {
    return !env_is("DSEEK_PDL", "0") && device_attribute(cudaDevAttrComputeCapabilityMajor) >= 9;
  }();
  return on;
}

}  // namespace

bool pdl_enabled() {
  return pdl_switch().load();
}

void set_pdl_enabled(bool on) {
  pdl_switch().store(on && device_attribute(cudaDevAttrComputeCapabilityMajor) >= 9);
}

bool available() {
  return runtime().present;
}
bool compiled() {
  return true;
}
std::string describe() {
  return runtime().description;
}

void require(const std::string& what) {
  if (!available()) fail("[cuda] {} needs a CUDA device: {}", what, runtime().description);
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

void select_device(int ordinal) {
  const int count = device_count();
  DSEEK_CHECK(ordinal >= 0 && ordinal < count,
              "[cuda] device {}: this machine has {} CUDA device{}", ordinal, count,
              count == 1 ? "" : "s");
  DSEEK_CHECK(!g_started.load() || ordinal == g_ordinal.load(),
              "[cuda] device {}: the CUDA runtime has already started on device {}", ordinal,
              g_ordinal.load());
  g_ordinal = ordinal;
}

int device_ordinal() {
  return g_ordinal.load();
}

void* alloc(size_t bytes) {
  DSEEK_CHECK(!t_background, "[cuda] allocating {} inside a Background scope", gib(bytes));
  void* ptr = nullptr;
  cudaError_t status = cudaMallocAsync(&ptr, bytes ? bytes : 1, stream());
  if (status != cudaSuccess) {
    cudaGetLastError();
    MemoryInfo m = memory_info();
    fail("[cuda] allocating {} failed: {} ({} free of {} on the device, {} held by dseek's pool)",
         gib(bytes), cudaGetErrorString(status), gib(m.device_free), gib(m.device_total),
         gib(m.pool_reserved));
  }
  return ptr;
}

void free(void* ptr) {
  if (!ptr) return;
  const cudaError_t status = cudaFreeAsync(ptr, stream());
  // Tensors destroyed while a failed graph capture unwinds: their memory was the spoiled graph's
  // (nothing to give back), and throwing from a destructor would end the process.
  if (status == cudaErrorStreamCaptureInvalidated || status == cudaErrorStreamCaptureUnsupported) {
    cudaGetLastError();
    return;
  }
  if (status != cudaSuccess)
    raise_error(status, "cudaFreeAsync(ptr, stream())", __FILE__, __LINE__);
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  // Pageable host memory: the call returns once the source has been staged, so the caller may
  // reuse it.
  DSEEK_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()));
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  DSEEK_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
  DSEEK_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void copy_on_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  DSEEK_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

void fill_bytes(void* dst, int byte, size_t bytes) {
  if (bytes == 0) return;
  DSEEK_CUDA_CHECK(cudaMemsetAsync(dst, byte, bytes, stream()));
}

void synchronize() {
  DSEEK_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

Graph::~Graph() {
  discard_capture();
  // A replay may still be running: destroy after it (errors here have nowhere to go).
  if (exec_) {
    cudaStreamSynchronize(stream());
    cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  }
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
}

void Graph::begin_capture() {
  DSEEK_CHECK(!capturing_ && !exec_ && !graph_, "[cuda] a graph is captured once");
  // Thread-local mode: only this thread's calls are checked for capture safety, so other
  // threads (a server's HTTP workers) are unaffected.
  DSEEK_CUDA_CHECK(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
}

void Graph::end_capture() {
  DSEEK_CHECK(capturing_, "[cuda] end_capture without begin_capture");
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  DSEEK_CUDA_CHECK(cudaStreamEndCapture(stream(), &graph));
  graph_ = graph;
  cudaGraphExec_t exec = nullptr;
  DSEEK_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  exec_ = exec;
}

void Graph::discard_capture() noexcept {
  if (!capturing_) return;
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(stream(), &graph);  // fails for an invalidated capture; graph stays null
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();  // the capture's failure is not a device error: clear it
}

void Graph::launch() const {
  DSEEK_CHECK(exec_, "[cuda] launch of a graph that was not captured");
  DSEEK_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), stream()));
}

HostReadback::HostReadback(int slots, size_t slot_bytes) : slot_bytes_(slot_bytes) {
  DSEEK_CHECK(slots > 0 && slot_bytes > 0, "[cuda] readback of {} slots of {} bytes", slots,
              slot_bytes);
  DSEEK_CUDA_CHECK(cudaMallocHost(&host_, size_t(slots) * slot_bytes));
  for (int i = 0; i < slots; ++i) {
    cudaEvent_t event = nullptr;
    DSEEK_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    events_.push_back(event);
  }
}

HostReadback::~HostReadback() {
  // Copies in flight write into host_: wait for them (errors here have nowhere to go).
  for (void* event : events_) {
    cudaEventSynchronize(static_cast<cudaEvent_t>(event));
    cudaEventDestroy(static_cast<cudaEvent_t>(event));
  }
  if (host_) cudaFreeHost(host_);
}

void HostReadback::copy(int slot, const void* src) {
  DSEEK_CHECK(slot >= 0 && size_t(slot) < events_.size(), "[cuda] readback slot {}", slot);
  char* dst = static_cast<char*>(host_) + size_t(slot) * slot_bytes_;
  DSEEK_CUDA_CHECK(cudaMemcpyAsync(dst, src, slot_bytes_, cudaMemcpyDeviceToHost, stream()));
  DSEEK_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(events_[size_t(slot)]), stream()));
}

const void* HostReadback::wait(int slot) {
  DSEEK_CHECK(slot >= 0 && size_t(slot) < events_.size(), "[cuda] readback slot {}", slot);
  DSEEK_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(events_[size_t(slot)])));
  // A kernel fault before the copy surfaces here rather than as a wrong value.
  DSEEK_CUDA_CHECK(cudaGetLastError());
  return static_cast<const char*>(host_) + size_t(slot) * slot_bytes_;
}

MemoryInfo memory_info() {
  MemoryInfo m;
  if (!available()) return m;
  cudaMemPool_t pool;
  DSEEK_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_ordinal()));
  uint64_t value = 0;
  DSEEK_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &value));
  m.pool_reserved = size_t(value);
  DSEEK_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &value));
  m.pool_used = size_t(value);
  DSEEK_CUDA_CHECK(cudaMemGetInfo(&m.device_free, &m.device_total));
  return m;
}

}  // namespace dseek::cuda
