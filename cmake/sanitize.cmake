# Instrumented builds (scripts/sanitize.sh, scripts/fuzz.sh), in a tree of their own:
#   -DBN_SANITIZE=address,undefined   AddressSanitizer (leaks included) + UndefinedBehaviorSanitizer
#   -DBN_SANITIZE=thread              ThreadSanitizer
# Everything this project compiles from here on is instrumented: the core, the shared library,
# the tests and the examples. The benchmark is not (its peers are prebuilt libraries; the
# scripts configure without it). Undefined behaviour aborts at the first report.
#
# ThreadSanitizer cannot see the synchronization inside the system's oneTBB (libtbb is not
# instrumented), so a TSan build bounds the parallel path to the calling thread
# (BN_SERIAL_EXECUTOR in src/parallel/executor.cpp): the races TSan checks are those between
# the caller's threads (the layer's access guard, the saved forward, the error message).
#
# -DBN_FUZZ=ON (clang only) adds libFuzzer's coverage instrumentation to the same code and
# builds the fuzz targets of tests/fuzz.
set(BN_SANITIZE "" CACHE STRING "Sanitizers to instrument the library and tests with: address,undefined or thread")
option(BN_TSAN_WITH_TBB "ThreadSanitizer builds: keep oneTBB's parallel path (reports races TSan cannot rule out)" OFF)
option(BN_FUZZ "Build the libFuzzer targets of tests/fuzz (clang; implies coverage instrumentation)" OFF)

if(BN_SANITIZE)
  if(NOT BN_SANITIZE MATCHES "^(address|undefined|address,undefined|undefined,address|thread)$")
    message(FATAL_ERROR "BN_SANITIZE=${BN_SANITIZE}: expected address,undefined or thread")
  endif()
  add_compile_options(-fsanitize=${BN_SANITIZE} -fno-omit-frame-pointer -g)
  add_link_options(-fsanitize=${BN_SANITIZE})
  if(BN_SANITIZE MATCHES "undefined")
    add_compile_options(-fno-sanitize-recover=undefined)
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
