#!/usr/bin/env bash
# Installs the built clattn into a clean prefix and builds examples/ against that install
# only: with find_package(clattn) (examples/CMakeLists.txt) and, for compare_devices,
# with pkg-config. CTest runs the built programs afterwards (tests/CMakeLists.txt).
#   build_examples.sh CMAKE CC BUILD_DIR SOURCE_DIR WORK_DIR
set -euo pipefail
cmake=$1 cc=$2 build=$3 src=$4 work=$5
prefix=$work/prefix
rm -rf "$prefix"
"$cmake" --install "$build" --prefix "$prefix" >/dev/null

# find_package: nothing but the install prefix tells CMake where clattn is.
"$cmake" -S "$src/examples" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
         -DCMAKE_C_COMPILER="$cc" >/dev/null
"$cmake" --build "$work/cmake" -j 2 >/dev/null

# pkg-config: the compiler line a Makefile would use.
pc=$(dirname "$(find "$prefix" -name clattn.pc | head -n 1)")
export PKG_CONFIG_PATH=$pc
libdir=$(pkg-config --variable=libdir clattn)
# shellcheck disable=SC2046 # pkg-config's output is a list of words
"$cc" -std=c11 -O2 -Wall -Wextra -Werror $(pkg-config --cflags clattn) "$src/examples/compare_devices.c" \
      -o "$work/compare_devices_pkgconfig" $(pkg-config --libs clattn) -lm -Wl,-rpath,"$libdir"
echo "examples built against $prefix (find_package and pkg-config $(pkg-config --modversion clattn))"
