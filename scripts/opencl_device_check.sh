#!/usr/bin/env bash
# Exit 0 when clinfo lists at least one OpenCL device, else say so on stderr and exit 1.
# clinfo's output is taken whole before it is searched: `clinfo -l | grep -q` fails under
# pipefail when grep exits before clinfo has written every platform (clinfo then dies of
# SIGPIPE), which happens with several platforms installed (PoCL, rusticl, Clover).
set -euo pipefail
devices=$(clinfo -l 2>/dev/null || true)
if ! grep -q "Device #" <<<"$devices"; then
  echo "error: no OpenCL device found (clinfo -l lists none)" >&2
  exit 1
fi
