#!/usr/bin/env bash
# Installs what clattn needs on Debian or Ubuntu (only what is missing), builds it, then
#   bash scripts/quickstart.sh        runs `clattn check` and a short `clattn bench`
#   bash scripts/quickstart.sh test   runs the whole test suite (what .ci/run does)
# Runs as root, or uses sudo for apt-get. Fails when no OpenCL device is found.
set -euo pipefail
mode=${1:-main}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${CLATTN_BUILD_DIR:-$root/build}

packages=(cmake make gcc pkg-config opencl-headers ocl-icd-opencl-dev pocl-opencl-icd
          libclblast-dev libcmocka-dev oclgrind clinfo)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A machine with no OpenCL device cannot run clattn: say so and stop.
if ! clinfo -l 2>/dev/null | grep -q "Device #"; then
  echo "error: no OpenCL device found (clinfo -l lists none)" >&2
  exit 1
fi

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$jobs"

case "$mode" in
  main)
    "$build/clattn" devices
    "$build/clattn" check
    "$build/clattn" bench --shape 1,8,8,512,512,64 --path all --runs 3
    ;;
  test)
    ctest --test-dir "$build" --output-on-failure -j "$jobs"
    ;;
  *)
    echo "usage: bash scripts/quickstart.sh [main|test]" >&2
    exit 2
    ;;
esac
