#!/usr/bin/env bash
# Installs the Debian packages dseek builds, tests and demos with. Idempotent: packages already
# present are skipped, so a warm machine pays nothing. Run as root (or with sudo available).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libopenblas-dev libomp-dev
  nlohmann-json3-dev libcli11-dev libfmt-dev libspdlog-dev
  libpcre2-dev libpng-dev libtomlplusplus-dev libsqlite3-dev zlib1g-dev
  libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenmpi-dev openmpi-bin
  clang libclang-rt-14-dev
  fortunes python3
)

# Node.js and npm (the serving tests drive the server with the official `openai` npm client): from
# Debian only when the machine has none; a Node.js installed otherwise (with its own npm) conflicts
# with Debian's npm package.
if ! command -v node >/dev/null 2>&1; then packages+=(nodejs); fi
if ! command -v npm >/dev/null 2>&1; then packages+=(npm); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ((${#missing[@]} > 0)); then
  echo "[setup] installing: ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "[setup] done"
fi

# The UCI digits for the vision proxy (src/data/digits.h): scikit-learn's digits.csv.gz, taken
# out of the python3-sklearn package without installing it (installing pulls scipy, boost and
# pythran, hundreds of MB; the .deb is ~2 MB), into the cache the loader looks at:
# $DSEEK_DATA/digits.csv.gz, else ~/.cache/dseek/digits.csv.gz. Skipped when python3-sklearn is
# installed or the copy exists. A failure is a warning: only the vision proxy needs the file,
# and its tests say they skip without it.
digits_member=./usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz
digits_dest=${DSEEK_DATA:-${HOME:-/root}/.cache/dseek}/digits.csv.gz
if [[ ! -f ${digits_member#.} && ! -f $digits_dest ]]; then
  digits_tmp=$(mktemp -d)
  if ! (cd "$digits_tmp" && apt-get download -qq python3-sklearn 2>/dev/null); then
    $SUDO apt-get update -qq || true
    (cd "$digits_tmp" && apt-get download -qq python3-sklearn 2>/dev/null) || true
  fi
  deb=$(ls "$digits_tmp"/python3-sklearn_*.deb 2>/dev/null | head -n 1 || true)
  if [[ -n $deb ]] && mkdir -p "$(dirname "$digits_dest")" &&
    dpkg-deb --fsys-tarfile "$deb" | tar -x -O "$digits_member" >"$digits_dest.part" &&
    gzip -t "$digits_dest.part"; then
    mv "$digits_dest.part" "$digits_dest"
    echo "[setup] digits data set: $digits_dest"
  else
    rm -f "$digits_dest.part"
    echo "[setup] warning: could not fetch the digits (apt-get download python3-sklearn); the" \
      "vision proxy and its tests need it" >&2
  fi
  rm -rf "$digits_tmp"
fi
