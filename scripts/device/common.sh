# Sourced by the scripts/device/bench_*.sh programs after they set USAGE and DEFAULT_PARTS:
# resolves BIN_DIR and OUT (arguments 1 and 2; OUT created) to absolute paths, PARTS (argument 3,
# a comma list), the libraries' path (BIN_DIR/lib for shared libraries carried with binaries built
# elsewhere; NCCL's) and the OpenMP settings, and defines has PART and status=0.
BIN=${1:?usage: $USAGE}
OUT=${2:?usage: $USAGE}
PARTS=${3:-$DEFAULT_PARTS}
BIN=$(cd "$BIN" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export LD_LIBRARY_PATH=$BIN/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
# NCCL's library, which dseek opens at run time: PyTorch's copy (nvidia-nccl) when the CUDA
# toolkit has none.
if nccl_lib=$(python3 -c "import nvidia.nccl as n; print(list(n.__path__)[0] + '/lib')" 2>/dev/null); then
  export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$nccl_lib
fi
# All cores for the host-side random fill of the weights; passive waits so that idle OpenMP
# workers do not spin beside the thread that drives the GPU.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
has() { [[ ",$PARTS," == *",$1,"* ]]; }
status=0
