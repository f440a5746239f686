#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs Debian dependencies, builds with ASan/UBSan and
# -Werror, runs every test (unit, op, model conformance against transformers fixtures, CLI), then
# a short libFuzzer run over the parsers. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/setup.sh

jobs=$(nproc)
echo "== build (ASan + UBSan)"
# -O1 -g1 (line tables only) rather than RelWithDebInfo's -O2 -g: half the compile time on CI's two
# cores, still symbolised sanitizer reports, and the test run itself is mostly OpenBLAS and MPI.
sanitize_flags="-O1 -g1 -DNDEBUG"
cmake -S . -B build-test -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSEEK_SANITIZE=ON \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$sanitize_flags" -DCMAKE_C_FLAGS_RELWITHDEBINFO="$sanitize_flags" \
  -DDSEEK_BENCH=OFF >/dev/null
cmake --build build-test -j "$jobs"

echo "== tests"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
# OpenMPI keeps allocations until exit (the MPI ranks of tests/test_train_dist.cpp, which also
# unwind fully for these to match): suppressed by library, so leaks in dseek itself still count.
# intercept_tls_get_addr=0: LSan's record of OpenMPI's dynamic TLS can be bogus and fault its
# exit-time scan (see spawn() in tests/test_train_dist.cpp).
export LSAN_OPTIONS=suppressions=$root/tests/lsan_mpi.supp:intercept_tls_get_addr=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1
(cd build-test && ctest -j "$jobs" --output-on-failure --timeout 600)

# CUDA: no GPU on CI, but nvcc is there, so the CUDA sources must compile warning-free; the backend
# conformance tests then report that they skip (they run on the GPU machine:
# scripts/device/cuda_check.sh).
nvcc=$(command -v nvcc || true)
[[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
if [[ -n $nvcc ]]; then
  echo "== CUDA build (compile only: $($nvcc --version | tail -n 1))"
  # No build type: host code at -O0 (it only runs to report the skips), a shorter compile on CI's
  # two cores; device code is still optimised by ptxas.
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE= -DDSEEK_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES=90a-real -DDSEEK_BENCH=OFF >/dev/null
  cmake --build build-cuda -j "$jobs" --target dseek_backend_tests
  build-cuda/dseek_backend_tests 2>&1 | tail -n 3
  # Kernels' own source on host threads (bench/kernels/tc_emulation.h re-implements
  # mma/ldmatrix/wgmma from the PTX ISA, shuffles, barriers and the float intrinsics): the
  # tensor-core kernels' indexing, masks and splits against double references, and the AdamW
  # update by rows and the MoE layer's fused end against the kernels they stand for, bit for bit,
  # without a GPU. About a minute in all.
  echo "== kernel emulators"
  # The CUDA headers (cuda_bf16.h) from where nvcc itself looks: its dry run prints its include
  # flags, which hold wherever this toolkit keeps them (targets/<arch>/include, cccl).
  cuda_includes=()
  while read -r line; do
    eval "cuda_includes+=(${line#*=})"
  done < <("$nvcc" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | grep -E '^#\$ (SYSTEM_)?INCLUDES=')
  cuda_root=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
  if ! printf '%s\n' "${cuda_includes[@]}" | sed 's/^-I//' | while read -r dir; do
    [[ -f $dir/cuda_bf16.h ]] && echo found
  done | grep -q found; then
    # Not where nvcc says: look through the toolkit (and the usual system places) for it.
    bf16_header=$(find "$cuda_root" /usr/local/cuda* /usr/include /usr/lib/cuda -name cuda_bf16.h \
      -print -quit 2>/dev/null || true)
    [[ -n $bf16_header ]] || { echo "no cuda_bf16.h beside $nvcc" >&2; exit 1; }
    cuda_includes+=(-I "$(dirname "$bf16_header")")
  fi
  for emulator in bench/kernels/*_emulate.cpp; do
    name=$(basename "$emulator" .cpp)
    g++ -std=c++20 -O1 -pthread -Wall -Wextra -Werror -Wno-unknown-pragmas -I src \
      "${cuda_includes[@]}" "$emulator" -o "build-cuda/$name"
    "build-cuda/$name" | tail -n 1 | sed "s/^/$name: /"
  done
else
  echo "== CUDA build skipped: no nvcc on this machine"
fi

if compgen -G "tests/fuzz/*.cpp" >/dev/null; then
  echo "== fuzz (libFuzzer, clang)"
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$sanitize_flags" -DDSEEK_FUZZ=ON -DDSEEK_TESTS=OFF -DDSEEK_BENCH=OFF >/dev/null
  # Only the fuzzers (and the libraries they link), not the CLI and training libraries.
  fuzz_targets=$(for f in tests/fuzz/*.cpp; do basename "$f" .cpp; done)
  cmake --build build-fuzz -j "$jobs" --target $fuzz_targets
  seconds=${DSEEK_FUZZ_SECONDS:-30}
  for fuzzer in build-fuzz/fuzz_*; do
    name=$(basename "$fuzzer")
    corpus="$root/tests/fuzz/corpus/${name#fuzz_}"
    work=$(mktemp -d)
    [[ -d "$corpus" ]] && cp -r "$corpus"/. "$work"/
    echo "-- $name for ${seconds}s"
    "$fuzzer" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 "$work" 2>&1 | tail -n 2
    rm -rf "$work"
  done
fi
echo "== all tests passed"
