# Runs the driver under oclgrind and fails when oclgrind reports anything on stderr
# (invalid accesses, data races, uninitialised values, API errors) or the driver fails.
#   cmake -DOCLGRIND=... -DDRIVER=... -DFLAGS=--check-api,--data-races -DPATHS=unfused,fused -P run_oclgrind.cmake
# (commas, not semicolons, separate list items: they survive add_test unescaped)
if(NOT OCLGRIND)
  message(FATAL_ERROR "oclgrind is not installed (Debian: apt-get install oclgrind); the kernels cannot be checked")
endif()
string(REPLACE "," ";" FLAGS "${FLAGS}")
string(REPLACE "," ";" PATHS "${PATHS}")
execute_process(COMMAND ${OCLGRIND} ${FLAGS} ${DRIVER} ${PATHS}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}")
string(STRIP "${err}" err)
if(NOT err STREQUAL "")
  message(FATAL_ERROR "oclgrind reported:\n${err}")
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the driver failed (exit ${rc})")
endif()
