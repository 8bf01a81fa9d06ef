# ctest helper: the nonlinear-deblur task end to end on files the test writes itself: a small random bkse
# KernelWizard in the GOPRO_wVAE.pth layout and two 128x128 RGB images (write_nonlinear_blur_fixture), a
# random 128x128 RGB tiny ADM model (diffpost init); then `diffpost restore --task nonlinear-deblur
# --operator-weights FILE` must write every output with finite metrics, `degrade` its measurements, the
# redrawn latent must give another measurement than the fixed one, and a linear-only method must be refused.
#   cmake -DDIFFPOST=<exe> -DFIXTURE=<exe> -DCONFIG=<yaml> -DOUT=<dir> -P this
file(REMOVE_RECURSE "${OUT}")
include(${CMAKE_CURRENT_LIST_DIR}/run_tool.cmake)

run_tool(ignored "${FIXTURE}" "${OUT}/files")
run_tool(ignored "${DIFFPOST}" init --config "${CONFIG}" --out "${OUT}/files/model.pt" --seed 1 --force)
set(weights "${OUT}/files/kernel_wizard.pth")
set(images "${OUT}/files/image_0.png" "${OUT}/files/image_1.png")
set(model --model "${OUT}/files/model.pt" --config "${CONFIG}")

run_tool(ignored "${DIFFPOST}" restore --task nonlinear-deblur --operator-weights "${weights}" ${model} --steps 3 --batch 2
    --threads 2 --seed 3 --out "${OUT}/restore" ${images})
foreach(index 0 1)
  foreach(kind truth measurement naive dps)
    if(NOT EXISTS "${OUT}/restore/nonlinear-deblur/image_${index}_${kind}.png")
      message(FATAL_ERROR "missing ${OUT}/restore/nonlinear-deblur/image_${index}_${kind}.png")
    endif()
  endforeach()
endforeach()
file(STRINGS "${OUT}/restore/nonlinear-deblur/metrics.csv" rows)
list(LENGTH rows row_count)
if(NOT row_count EQUAL 9)  # header + 2 images x (naive, dps) + mean/std x (dps, naive)
  message(FATAL_ERROR "metrics.csv has ${row_count} rows, expected 9:\n${rows}")
endif()
foreach(row IN LISTS rows)
  if(NOT row MATCHES "^image,method" AND NOT row MATCHES ",-?[0-9]+\\.[0-9]+,-?[0-9]+\\.[0-9]+$")
    message(FATAL_ERROR "metrics.csv row without two finite numbers: ${row}")
  endif()
endforeach()
message(STATUS "metrics.csv:\n${rows}")

# degrade, fixed and redrawn latent: the same seed draws the same first latent, so the two measurements
# differ only because the redrawn operator draws again for the measurement (the fixed one is drawn once).
foreach(mode fixed redrawn)
  run_tool(ignored "${DIFFPOST}" degrade --task nonlinear-deblur --operator-weights "${weights}" --kernel-latent ${mode}
      --sigma 0 --seed 3 --out "${OUT}/degrade-${mode}" ${images})
  if(NOT EXISTS "${OUT}/degrade-${mode}/image_0_measurement.png")
    message(FATAL_ERROR "degrade --kernel-latent ${mode} wrote no image_0_measurement.png")
  endif()
  file(SHA256 "${OUT}/degrade-${mode}/image_0_measurement.png" hash_${mode})
endforeach()
file(SHA256 "${OUT}/files/image_0.png" hash_truth)
if(hash_fixed STREQUAL hash_truth)
  message(FATAL_ERROR "the nonlinear blur left the image unchanged")
endif()

# A method that needs a linear operator is refused by name.
execute_process(COMMAND "${DIFFPOST}" restore --task nonlinear-deblur --method ddrm --operator-weights "${weights}"
                        ${model} --steps 2 --out "${OUT}/ddrm" ${images}
                RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "ddrm cannot run task nonlinear-deblur")
  message(FATAL_ERROR "ddrm should refuse nonlinear-deblur (exit ${rc}):\n${err}")
endif()
message(STATUS "refused as expected: ${err}")
message(STATUS "nonlinear-deblur end to end: ok")
