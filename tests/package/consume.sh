#!/usr/bin/env bash
# Installs the build tree into a fresh prefix, then builds and runs a consumer against the
# installed files only, once with find_package(batchnorm 1) and once with pkg-config; then
# builds the library from source inside a consumer project (add_subdirectory). Each consumer
# is built from C (batchnorm.h) and from C++ (the header-only wrapper batchnorm.hpp).
# When libbatchnorm_mpi was built, its consumer too (CMake component mpi and pkg-config
# batchnorm-mpi), run on 2 ranks by the launcher given after the third argument.
#   consume.sh <build-dir> <source-dir> <work-dir> [<mpiexec> <flags>...]
set -euo pipefail
build_dir=$1 source_dir=$2 work=$3
shift 3
mpiexec=("$@")
rm -rf "$work" && mkdir -p "$work"
prefix=$work/prefix
cmake --install "$build_dir" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name 'libbatchnorm.so.1' | head -n 1)")
test -L "$libdir/libbatchnorm.so" && test -L "$libdir/libbatchnorm.so.1"

# 1. CMake package.
cmake -S "$source_dir/tests/package/consumer" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/cmake" >/dev/null
LD_LIBRARY_PATH=$libdir "$work/cmake/consumer"
LD_LIBRARY_PATH=$libdir "$work/cmake/consumer_cpp"

# 2. pkg-config.
export PKG_CONFIG_PATH=$libdir/pkgconfig
cc -std=c99 -Wall -Werror "$source_dir/tests/package/consumer/main.c" -o "$work/pc_consumer" \
  $(pkg-config --cflags --libs batchnorm) -lm
LD_LIBRARY_PATH=$libdir "$work/pc_consumer"
c++ -std=c++17 -Wall -Werror "$source_dir/tests/package/consumer/main.cpp" -o "$work/pc_consumer_cpp" \
  $(pkg-config --cflags --libs batchnorm)
LD_LIBRARY_PATH=$libdir "$work/pc_consumer_cpp"

# 3. add_subdirectory: the library built from source inside the consumer's tree (its tests
#    and examples stay off when it is not the top-level project).
cmake -S "$source_dir/tests/package/subdir_consumer" -B "$work/subdir" -DBN_SOURCE_DIR="$source_dir" >/dev/null
cmake --build "$work/subdir" -j"$(nproc)" >/dev/null
"$work/subdir/consumer"
"$work/subdir/consumer_cpp"

# 4. libbatchnorm_mpi, when built: find_package(batchnorm 1 COMPONENTS mpi) and pkg-config
#    batchnorm-mpi, each run on 2 ranks.
if [ -e "$libdir/libbatchnorm_mpi.so.1" ] && [ ${#mpiexec[@]} -gt 0 ]; then
  test -L "$libdir/libbatchnorm_mpi.so" && test -f "$prefix/include/batchnorm/batchnorm_mpi.h"
  cmake -S "$source_dir/tests/package/mpi_consumer" -B "$work/mpi" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
  cmake --build "$work/mpi" >/dev/null
  LD_LIBRARY_PATH=$libdir "${mpiexec[@]}" "$work/mpi/mpi_consumer"
  if [ -f "$libdir/pkgconfig/batchnorm-mpi.pc" ]; then
    cc -std=c99 -Wall -Werror "$source_dir/tests/package/mpi_consumer/main.c" -o "$work/pc_mpi_consumer" \
      $(pkg-config --cflags --libs batchnorm-mpi) -lm
    LD_LIBRARY_PATH=$libdir "${mpiexec[@]}" "$work/pc_mpi_consumer"
  fi
else
  echo "(libbatchnorm_mpi not built: its consumer is not run)"
fi
