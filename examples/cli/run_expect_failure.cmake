# ctest helper: runs `diffpost ARGS` (a space-separated string) and passes when the command fails with a
# non-zero exit, prints exactly one line on stderr matching REGEX, and (when OUT is given) has not created the
# output folder OUT - i.e. nothing was half-written.
# ENVIRONMENT (VAR=value;...) is set for the command only.
#   cmake -DDIFFPOST=<exe> -DARGS="restore --task nope ..." -DREGEX="unknown task" [-DOUT=<dir>]
#         [-DENVIRONMENT="RANK=1;WORLD_SIZE=2"] -P this
separate_arguments(arguments UNIX_COMMAND "${ARGS}")
if(OUT)
  file(REMOVE_RECURSE "${OUT}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" -E env ${ENVIRONMENT} "${DIFFPOST}" ${arguments}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "expected a failure, but diffpost ${ARGS} exited 0\nstdout: ${out}\nstderr: ${err}")
endif()
# PROGRESS: the command runs before it fails; its progress lines on stderr are left out.
if(PROGRESS)
  string(REGEX REPLACE "[^\n]*( it/s | s/it )[^\n]*\n?" "" err "${err}")
endif()
string(STRIP "${err}" stripped)
if(stripped MATCHES "\n")
  message(FATAL_ERROR "expected one line on stderr, got:\n${err}")
endif()
if(NOT stripped MATCHES "^diffpost [a-z]+: error: .*${REGEX}")
  message(FATAL_ERROR "stderr does not match 'diffpost <command>: error: ...${REGEX}':\n${err}")
endif()
if(OUT AND EXISTS "${OUT}")
  message(FATAL_ERROR "the failed run created '${OUT}'")
endif()
message(STATUS "failed as expected (exit ${rc}): ${stripped}")
