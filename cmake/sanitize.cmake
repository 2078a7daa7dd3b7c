# Instrumented builds (scripts/sanitize.sh, scripts/fuzz.sh: clang), in a tree of their own:
#   -DBN_SANITIZE=address,undefined   AddressSanitizer (leaks included) + UndefinedBehaviorSanitizer
#   -DBN_SANITIZE=thread              ThreadSanitizer
# Everything this project compiles from here on is instrumented: the core, the shared library,
# the tests and the examples. The benchmark is not (its peers are prebuilt libraries; the
# scripts configure without it). Undefined behaviour aborts at the first report.
#
# ThreadSanitizer cannot see the synchronization inside the system's oneTBB (libtbb is not
# instrumented), so a TSan build bounds the parallel path to the calling thread
# (BN_SERIAL_EXECUTOR in src/parallel/executor.cpp): the races TSan checks are those between
# the caller's threads (the layer's access guard, the saved forward, the error message). With
# BN_TSAN_WITH_TBB=ON it reports races on TBB's own task objects (start_for, blocked_range)
# passed between threads inside libtbb.
#
# -DBN_FUZZ=ON (clang only) adds libFuzzer's coverage instrumentation to the same code and
# builds the fuzz targets of tests/fuzz: one address,undefined tree serves the instrumented
# test suite and the fuzzers, so the library is compiled instrumented once.
set(BN_SANITIZE "" CACHE STRING "Sanitizers to instrument the library and tests with: address,undefined or thread")
option(BN_TSAN_WITH_TBB "ThreadSanitizer builds: keep oneTBB's parallel path (reports races TSan cannot rule out)" OFF)
option(BN_FUZZ "Build the libFuzzer targets of tests/fuzz (clang; implies coverage instrumentation)" OFF)

if(BN_SANITIZE)
  if(NOT BN_SANITIZE MATCHES "^(address|undefined|address,undefined|undefined,address|thread)$")
    message(FATAL_ERROR "BN_SANITIZE=${BN_SANITIZE}: expected address,undefined or thread")
  endif()
  # -O1 and line tables only: instrumented SIMD kernels compile several times faster than at
  # -O2 -g (measured: 45 s instead of 124 s for the AVX-512 translation unit), and reports
  # still name file and line. Appended after the build type's flags, so -O1 wins.
  if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    add_compile_options(-O1 -gline-tables-only)
  else()
    add_compile_options(-O1 -g1)
  endif()
  add_compile_options(-fsanitize=${BN_SANITIZE} -fno-omit-frame-pointer)
  add_link_options(-fsanitize=${BN_SANITIZE})
  if(BN_SANITIZE MATCHES "undefined")
    add_compile_options(-fno-sanitize-recover=undefined)
  endif()
  if(CMAKE_C_COMPILER_ID MATCHES "Clang")
    # C programs (tests/c, examples/c) load the C++ library: clang links the C++ parts of the
    # sanitizer runtimes (UBSan's vptr checks) into them only when asked, and they need libstdc++.
    add_link_options($<$<LINK_LANGUAGE:C>:-fsanitize-link-c++-runtime>)
    set(CMAKE_C_STANDARD_LIBRARIES "${CMAKE_C_STANDARD_LIBRARIES} -lstdc++")
  endif()
  if(BN_SANITIZE STREQUAL "thread" AND NOT BN_TSAN_WITH_TBB)
    set(BN_SERIAL_EXECUTOR ON)
  endif()
endif()

if(BN_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "BN_FUZZ needs clang (libFuzzer): configure with CC=clang CXX=clang++")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()
