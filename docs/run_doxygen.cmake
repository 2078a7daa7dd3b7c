# Runs Doxygen and fails on any warning or a missing page. Doxygen's own exit status already
# fails (WARN_AS_ERROR = FAIL_ON_WARNINGS); the warning log is checked as well, so the test
# stays strict even under a Doxygen that ignores that setting.
#   -DDOXYGEN=<doxygen> -DDOXYFILE=<configured Doxyfile> -DOUT=<its OUTPUT_DIRECTORY>
#   -DSTRICT_INPUT=<headers that must have every entity documented>
function(run_doxygen label config)
  file(REMOVE_RECURSE ${OUT}/html)
  file(REMOVE ${OUT}/doxygen-warnings.log)
  execute_process(COMMAND ${DOXYGEN} ${config} RESULT_VARIABLE rc)
  file(READ ${OUT}/doxygen-warnings.log warnings)
  if(NOT rc EQUAL 0 OR NOT warnings STREQUAL "")
    message(FATAL_ERROR "Doxygen (${label}) warned (status ${rc}):\n${warnings}")
  endif()
endfunction()

# 1. Strict: the C header alone, every entity documented (an undocumented one warns).
file(READ ${DOXYFILE} base)
file(WRITE ${OUT}/Doxyfile.strict "${base}\nINPUT = ${STRICT_INPUT}\nWARN_IF_UNDOCUMENTED = YES\n")
run_doxygen("undocumented entities in ${STRICT_INPUT}" ${OUT}/Doxyfile.strict)
# 2. The documentation as published: every public header.
run_doxygen("all public headers" ${DOXYFILE})
# The pages of the headers exist and document the API (a silently empty run would pass
# above): the C headers' file pages, the C++ wrapper's classes (exception mode).
foreach(page batchnorm_8h.html batchnorm__mpi_8h.html classbatchnorm_1_1throwing_1_1Layer.html
             classbatchnorm_1_1throwing_1_1Config.html)
  if(NOT EXISTS ${OUT}/html/${page})
    message(FATAL_ERROR "Doxygen wrote no ${page}")
  endif()
endforeach()
file(READ ${OUT}/html/batchnorm_8h.html h)
foreach(symbol bn_create bn_forward bn_backward bn_fold_into bn_apply_constraints BN_PARAM_GAMMA)
  if(NOT h MATCHES "${symbol}")
    message(FATAL_ERROR "batchnorm_8h.html does not document ${symbol}")
  endif()
endforeach()
file(READ ${OUT}/html/batchnorm__mpi_8h.html h)
foreach(symbol bn_mpi_allreduce bn_mpi_user_data bn_config_set_mpi bn_mpi_last_error)
  if(NOT h MATCHES "${symbol}")
    message(FATAL_ERROR "batchnorm__mpi_8h.html does not document ${symbol}")
  endif()
endforeach()
file(READ ${OUT}/html/classbatchnorm_1_1throwing_1_1Layer.html layer)
foreach(member forward backward fold_into get_param)
  if(NOT layer MATCHES "${member}")
    message(FATAL_ERROR "the Layer page does not document ${member}")
  endif()
endforeach()
message(STATUS "Doxygen: no warnings, ${OUT}/html/index.html")
