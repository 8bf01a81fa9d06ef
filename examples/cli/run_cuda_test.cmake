# ctest helper (label cuda): `diffpost restore --device cuda` on the tiny model against the same run on the
# CPU. The measurements are made on the CPU, so truth, measurement and naive PNGs must be identical; the
# restorations (drawn from a CUDA generator) must exist with finite scores. Then --shard auto with torchrun's
# LOCAL_RANK=0 and --device cuda must run on cuda:0, and --precision bf16 must run. Without a usable CUDA
# device the first run fails with the message check_device gives, which the test reports as skipped.
#   cmake -DDIFFPOST=<exe> -DMODEL=<pt> -DCONFIG=<yaml> -DOUT=<dir> -P this
file(REMOVE_RECURSE "${OUT}")
set(common --task box-inpaint,sr --test-set 3 --steps 4 --seed 2 --threads 2 --model "${MODEL}"
           --config "${CONFIG}")

include(${CMAKE_CURRENT_LIST_DIR}/run_tool.cmake)

run_tool(output "${DIFFPOST}" restore ${common} --device cuda --out "${OUT}/cuda")
if(NOT output MATCHES "threads, on cuda:0")
  message(FATAL_ERROR "the CUDA run does not say it runs on cuda:0:\n${output}")
endif()
run_tool(output "${DIFFPOST}" restore ${common} --device cpu --out "${OUT}/cpu")
foreach(task box-inpaint sr)
  foreach(index 00000 00001 00002)
    foreach(kind truth measurement naive)
      set(file "${task}/fmnist_test_${index}_${kind}.png")
      file(SHA256 "${OUT}/cpu/${file}" on_cpu)
      file(SHA256 "${OUT}/cuda/${file}" on_cuda)
      if(NOT on_cpu STREQUAL on_cuda)
        message(FATAL_ERROR "${file} differs between the CPU and the CUDA run")
      endif()
    endforeach()
    if(NOT EXISTS "${OUT}/cuda/${task}/fmnist_test_${index}_dps.png")
      message(FATAL_ERROR "the CUDA run wrote no ${task}/fmnist_test_${index}_dps.png")
    endif()
  endforeach()
  file(STRINGS "${OUT}/cuda/${task}/metrics.csv" rows REGEX "^mean,dps,,[0-9]+\\.[0-9]+,[0-9.]+$")
  if(NOT rows)
    message(FATAL_ERROR "${task}/metrics.csv of the CUDA run has no finite DPS mean")
  endif()
endforeach()
run_tool(output "${CMAKE_COMMAND}" -E env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 "${DIFFPOST}" restore ${common}
            --device cuda --shard auto --out "${OUT}/local-rank")
if(NOT output MATCHES "on cuda:0")
  message(FATAL_ERROR "--shard auto with LOCAL_RANK=0 and --device cuda did not run on cuda:0:\n${output}")
endif()
run_tool(output "${DIFFPOST}" restore ${common} --device cuda --precision bf16 --out "${OUT}/bf16")
if(NOT output MATCHES "on cuda:0 \\(bf16\\)")
  message(FATAL_ERROR "--precision bf16 is not reported:\n${output}")
endif()
message(STATUS "restore on CUDA: ok")
