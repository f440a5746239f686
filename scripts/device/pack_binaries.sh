#!/usr/bin/env bash
# Packs a CUDA build's GPU programs, and the shared libraries they need beyond the C/C++ runtime
# and the CUDA toolkit's cuBLAS and runtime (which the GPU machine has), into one tarball to carry there for
# scripts/device/ab_run.sh ("lib/" beside the programs). About 20 MB with xz.
#   scripts/device/pack_binaries.sh [BUILD_DIR] [OUT_TARBALL]
# (defaults: build-rel and .devcarry/bin.tar.xz; .devcarry/ is git-ignored, so carry it by name)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-rel}
out=${2:-.devcarry/bin.tar.xz}
mkdir -p "$(dirname "$out")"
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/lib"
bins=(dseek dseek_backend_tests bench_train_cuda bench_decode_cuda bench_cuda_ops bench_cuda_fp8
  libkernel_profile.so)
for b in "${bins[@]}"; do
  [[ -f $build/$b ]] || continue
  cp "$build/$b" "$d/"
  ldd "$build/$b" | awk '/=> \//{print $3}' | while read -r lib; do
    case $(basename "$lib") in
      libc.so* | libm.so* | libpthread* | libdl.so* | librt.so* | ld-linux* | libstdc++* | \
        libgcc_s* | libcuda.so* | libnvidia* | libcublas* | libcudart*) ;;
      *) cp -Lu "$lib" "$d/lib/" ;;
    esac
  done
done
XZ_OPT="-T2 -6" tar -cJf "$out" -C "$d" .
ls -la "$out"
