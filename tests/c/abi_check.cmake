# ABI check of the shared library, run as
#   cmake -DLIB=<libbatchnorm.so> -DHEADER=<batchnorm.h> -DNM=<nm> -DREADELF=<readelf> -P abi_check.cmake
# (optional: -DSONAME=<expected SONAME> -DMIN_DECLARED=<n>, for libbatchnorm_mpi)
# Fails when
#   - a defined dynamic symbol does not start with bn_ (only the C API may be exported),
#   - a function declared BN_API in the header is not exported,
#   - an exported bn_ symbol is not declared in the header (an undocumented ABI),
#   - the SONAME is not libbatchnorm.so.1 (or SONAME).
cmake_policy(VERSION 3.25)  # IN_LIST, as in the project
if(NOT SONAME)
  set(SONAME libbatchnorm.so.1)
endif()
if(NOT MIN_DECLARED)
  set(MIN_DECLARED 30)
endif()

foreach(var LIB HEADER NM READELF)
  if(NOT ${var})
    message(FATAL_ERROR "abi_check: -D${var}=... is required")
  endif()
endforeach()

# --- exported symbols --------------------------------------------------------------
execute_process(COMMAND ${NM} -D --defined-only ${LIB}
                OUTPUT_VARIABLE nm_out RESULT_VARIABLE nm_rc ERROR_VARIABLE nm_err)
if(NOT nm_rc EQUAL 0)
  message(FATAL_ERROR "abi_check: ${NM} failed (${nm_rc}): ${nm_err}")
endif()
string(REPLACE "\n" ";" nm_lines "${nm_out}")
set(exported "")
set(foreign "")
foreach(line IN LISTS nm_lines)
  # "<address> <type> <name>[@version]"
  if(line MATCHES "^[0-9a-fA-F]* *([A-Za-z]) ([^ @]+)")
    set(type "${CMAKE_MATCH_1}")
    set(name "${CMAKE_MATCH_2}")
    if(type STREQUAL "A")  # absolute symbols are version-node names, not code or data
      continue()
    endif()
    if(name MATCHES "^bn_")
      list(APPEND exported "${name}")
    else()
      list(APPEND foreign "${name} (${type})")
    endif()
  endif()
endforeach()
list(LENGTH exported n_exported)
if(foreign)
  list(JOIN foreign "\n  " foreign_text)
  message(SEND_ERROR "abi_check: symbols exported that do not start with bn_:\n  ${foreign_text}")
endif()

# --- functions declared in the header ------------------------------------------------
file(READ ${HEADER} header_text)
# Join continuation lines so that a declaration split over lines still matches.
string(REGEX REPLACE "[\r\n]+" " " header_text "${header_text}")
string(REGEX MATCHALL "BN_API[^;(]*[ *](bn_[A-Za-z0-9_]+) *\\(" decls "${header_text}")
set(declared "")
foreach(decl IN LISTS decls)
  if(decl MATCHES "(bn_[A-Za-z0-9_]+) *\\($")
    list(APPEND declared "${CMAKE_MATCH_1}")
  endif()
endforeach()
list(REMOVE_DUPLICATES declared)
list(LENGTH declared n_declared)
# A parser that finds nothing would make the checks below vacuous.
if(n_declared LESS MIN_DECLARED)
  message(FATAL_ERROR "abi_check: found only ${n_declared} BN_API declarations in ${HEADER}; the parser is broken")
endif()

set(missing "")
foreach(fn IN LISTS declared)
  if(NOT fn IN_LIST exported)
    list(APPEND missing "${fn}")
  endif()
endforeach()
if(missing)
  list(JOIN missing "\n  " missing_text)
  message(SEND_ERROR "abi_check: declared in the header but not exported:\n  ${missing_text}")
endif()

set(undeclared "")
foreach(sym IN LISTS exported)
  if(NOT sym IN_LIST declared)
    list(APPEND undeclared "${sym}")
  endif()
endforeach()
if(undeclared)
  list(JOIN undeclared "\n  " undeclared_text)
  message(SEND_ERROR "abi_check: exported but not declared in the header:\n  ${undeclared_text}")
endif()

# --- SONAME ----------------------------------------------------------------------------
execute_process(COMMAND ${READELF} -d ${LIB} OUTPUT_VARIABLE dyn RESULT_VARIABLE re_rc ERROR_VARIABLE re_err)
if(NOT re_rc EQUAL 0)
  message(FATAL_ERROR "abi_check: ${READELF} failed (${re_rc}): ${re_err}")
endif()
if(dyn MATCHES "\\(SONAME\\)[^\n]*\\[([^]\n]*)\\]")
  set(soname "${CMAKE_MATCH_1}")
else()
  set(soname "<none>")
endif()
if(NOT soname STREQUAL SONAME)
  message(SEND_ERROR "abi_check: SONAME is ${soname}, expected ${SONAME}")
endif()

message(STATUS "abi_check: ${n_exported} bn_ symbols exported, ${n_declared} functions declared, SONAME ${soname}")
