#!/usr/bin/env bash
# Installs the build tree into a fresh prefix, then builds and runs a consumer against the
# installed files only, once with find_package(batchnorm 1) and once with pkg-config; then
# builds the library from source inside a consumer project (add_subdirectory). Each consumer
# is built from C (batchnorm.h) and from C++ (the header-only wrapper batchnorm.hpp).
set -euo pipefail
build_dir=$1 source_dir=$2 work=$3
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
