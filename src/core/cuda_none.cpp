// core/cuda.h in a build without CUDA: no device, and a clear error for anything that needs one.
#ifndef DSEEK_HAS_CUDA
#include "core/cuda.h"
#include "core/error.h"

namespace dseek::cuda {

namespace {
[[noreturn]] void not_built() {
  fail("[cuda] dseek was built without CUDA (configure with cmake -DDSEEK_CUDA=ON and nvcc)");
}
}  // namespace

bool available() {
  return false;
}
bool compiled() {
  return false;
}
std::string describe() {
  return "built without CUDA";
}
void require(const std::string& what) {
  fail("[cuda] {} needs CUDA, but dseek was built without it (cmake -DDSEEK_CUDA=ON)", what);
}
int device_count() {
  return 0;
}
void select_device(int ordinal) {
  fail("[cuda] device {}: dseek was built without CUDA (cmake -DDSEEK_CUDA=ON)", ordinal);
}
int device_ordinal() {
  return 0;
}
void* alloc(size_t) {
  not_built();
}
void free(void*) {
  not_built();
}
void copy_to_device(void*, const void*, size_t) {
  not_built();
}
void copy_to_host(void*, const void*, size_t) {
  not_built();
}
void copy_on_device(void*, const void*, size_t) {
  not_built();
}
void fill_bytes(void*, int, size_t) {
  not_built();
}
void convert(const void*, DType, void*, DType, size_t) {
  not_built();
}
void strided_copy(const void*, void*, size_t, const int64_t*, const int64_t*, int) {
  not_built();
}
void strided_convert(const void*, DType, const int64_t*, void*, DType, const int64_t*,
                     const int64_t*, int) {
  not_built();
}
void synchronize() {
  not_built();
}

Graph::~Graph() = default;
void Graph::begin_capture() {
  not_built();
}
void Graph::end_capture() {
  not_built();
}
void Graph::discard_capture() noexcept {}
void Graph::launch() const {
  not_built();
}
HostReadback::HostReadback(int, size_t) {
  not_built();
}
HostReadback::~HostReadback() = default;
void HostReadback::copy(int, const void*) {
  not_built();
}
const void* HostReadback::wait(int) {
  not_built();
}
Fork::Fork(bool) {}
Fork::~Fork() = default;
void Fork::join() {}
Fork::Side::Side(Fork&) {}
Fork::Side::~Side() = default;
bool branches_enabled() {
  return false;
}
bool on_side_stream() {
  return false;
}
void set_branches_enabled(bool) {}
Background::Background() {
  not_built();
}
Background::~Background() = default;
uint64_t Background::mark() {
  not_built();
}
void wait_background(uint64_t) {
  not_built();
}
void keep_sms_for_background(int, uint64_t) {}  // nothing runs beside anything without CUDA
int compute_sms() {
  not_built();
}

MemoryInfo memory_info() {
  return {};
}

}  // namespace dseek::cuda
#endif
