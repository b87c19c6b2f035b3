#!/usr/bin/env bash
# Installs what clattn needs on Debian or Ubuntu (only what is missing), builds it, then
#   bash scripts/quickstart.sh        runs a quick `clattn check` and a short `clattn bench`
#   bash scripts/quickstart.sh test   runs the test suite: every tier but `slow`
#                                     (.ci/run adds the slow tier, sanitizers and fuzzing)
# Runs as root, or uses sudo for apt-get. Fails when no OpenCL device is found.
set -euo pipefail
mode=${1:-main}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${CLATTN_BUILD_DIR:-$root/build}

# Two OpenCL implementations for the tests: PoCL (the CPU device) and Mesa's rusticl
# (llvmpipe, GPU-like limits; enabled per process with RUSTICL_ENABLE=llvmpipe).
# Python with venv and pip for the Python package's test (numpy and pytest come from PyPI).
packages=(cmake make gcc pkg-config opencl-headers ocl-icd-opencl-dev pocl-opencl-icd
          mesa-opencl-icd libclblast-dev libcmocka-dev oclgrind clinfo
          python3 python3-venv python3-pip)
# Open MPI for the test suite: libclattn_mpi's tests run several ranks on this machine.
if [ "$mode" = test ]; then
  packages+=(libopenmpi-dev openmpi-bin)
fi
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
bash "$root/scripts/opencl_device_check.sh"

jobs=$(nproc 2>/dev/null || echo 2)
# The MPI layer (libclattn_mpi, --context-parallel) whenever an MPI compiler is here.
mpi_flag=-DCLATTN_WITH_MPI=OFF
if command -v mpicc >/dev/null 2>&1; then
  mpi_flag=-DCLATTN_WITH_MPI=ON
fi
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "$mpi_flag" >/dev/null
cmake --build "$build" -j "$jobs"

case "$mode" in
  main)
    "$build/clattn" devices
    "$build/clattn" check
    "$build/clattn" bench --shape 1,8,8,512,512,64 --runs 3
    ;;
  test)
    ctest --test-dir "$build" --output-on-failure -j "$jobs" -LE slow
    ;;
  *)
    echo "usage: bash scripts/quickstart.sh [main|test]" >&2
    exit 2
    ;;
esac
