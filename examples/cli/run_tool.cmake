# Shared by the tool's ctest scripts: run_tool(<output variable> <command...>) runs a command and stores its
# standard output. The test models are untrained: a run whose only reports are restorations that explain little
# of the measurement exits 1 after writing everything, which counts as success; any other failure fails the
# test. A run that finds no usable CUDA device is reported as skipped (SKIPPED: ..., for ctest's
# SKIP_REGULAR_EXPRESSION).
function(run_tool output_variable)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(err MATCHES "this LibTorch has no CUDA support|no CUDA device is visible")
    string(REGEX MATCH "diffpost [a-z]+: error: [^\n]*" line "${err}")
    message("SKIPPED: no usable CUDA device: ${line}")
    message(FATAL_ERROR "skipped")
  endif()
  string(REGEX MATCHALL "diffpost [a-z]+: [^\n]*" reports "${err}")
  list(FILTER reports EXCLUDE REGEX "explain less than half of the measurement")
  if(NOT (rc EQUAL 0 OR (rc EQUAL 1 AND reports STREQUAL "")))
    message(FATAL_ERROR "${ARGN} failed (${rc}):\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
  set(${output_variable} "${out}" PARENT_SCOPE)
endfunction()
