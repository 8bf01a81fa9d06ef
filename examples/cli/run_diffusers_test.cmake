# ctest helper: `--model FOLDER` with a diffusers folder. Writes a random-weight CIFAR-shaped pipeline folder
# (make_diffusers_folder: UNet2DModel 32x32 RGB, DDPMScheduler) and two 32x32 RGB test images, then checks
# that `diffpost describe` prints the folder's configuration, that `diffpost restore --model FOLDER` runs the
# four CIFAR-10 tasks of the DPS reproduction study on them and writes every image and summary, and that an
# image of another size is refused naming the model's, that sample, denoise and eval run on the folder too,
# and that --config or --beta-schedule with a folder (whose config.json and scheduler decide) are refused.
#   cmake -DDIFFPOST=<exe> -DMAKE_FOLDER=<exe> -DOUT=<dir> -DWRONG_SIZE=<png> -P this
file(REMOVE_RECURSE "${OUT}")
set(folder "${OUT}/ddpm-cifar10-tiny")
execute_process(COMMAND "${MAKE_FOLDER}" "${folder}" 2 RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "make_diffusers_folder failed (${rc}):\n${out}\n${err}")
endif()

execute_process(COMMAND "${DIFFPOST}" describe "${folder}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(expected "diffusers folder [^\n]*ddpm-cifar10-tiny\n  images 3x32x32 [^\n]*\n  diffusers UNet2DModel from [^\n]*unet/diffusion_pytorch_model.safetensors\n  [^\n]*block_out_channels=\\[32, 64\\][^\n]*\n  DDPMScheduler\\(num_train_timesteps=1000, beta_schedule=linear[^\n]*variance_type=fixed_large[^\n]*\n  [0-9]+ parameters")
if(NOT rc EQUAL 0 OR NOT out MATCHES "${expected}")
  message(FATAL_ERROR "diffpost describe (exit ${rc}) did not print the folder's configuration:\n${out}\n${err}")
endif()
# The unet/ folder alone is a model folder without a scheduler config: DDPMScheduler's defaults, said so.
execute_process(COMMAND "${DIFFPOST}" describe "${folder}/unet" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "variance_type=fixed_small[^\n]*\\(defaults: the folder has no scheduler config\\)")
  message(FATAL_ERROR "diffpost describe FOLDER/unet (exit ${rc}):\n${out}\n${err}")
endif()

set(tasks box-inpaint sr gaussian-deblur colorize)
string(REPLACE ";" "," task_list "${tasks}")
execute_process(COMMAND "${DIFFPOST}" restore --model "${folder}" --task ${task_list} --sigma 0.05 --steps 4
                        --batch 2 --threads 2 --seed 1 --out "${OUT}/restore" "${folder}/images"
                RESULT_VARIABLE rc OUTPUT_VARIABLE restore_log ERROR_VARIABLE err)
set(out "${restore_log}")
# The random-weight model restores nothing: the run may report that with exit status 1 after writing
# everything; any other failure fails the test.
string(REGEX MATCHALL "diffpost restore: [^\n]*" reports "${err}")
list(FILTER reports EXCLUDE REGEX "explain less than half of the measurement")
if(NOT (rc EQUAL 0 OR (rc EQUAL 1 AND reports STREQUAL "")))
  message(FATAL_ERROR "diffpost restore --model FOLDER failed (${rc}):\n${out}\n${err}")
endif()
if(NOT out MATCHES "model [^\n]*ddpm-cifar10-tiny \\(diffusers\\), 2 images, 4 steps \\(ddpm sampler\\), noise gaussian sigma 0.05")
  message(FATAL_ERROR "restore did not say it runs the diffusers folder:\n${out}")
endif()
foreach(task IN LISTS tasks)
  foreach(index 0 1)
    foreach(kind truth measurement dps)
      if(NOT EXISTS "${OUT}/restore/${task}/cifar_${index}_${kind}.png")
        message(FATAL_ERROR "missing ${OUT}/restore/${task}/cifar_${index}_${kind}.png:\n${out}\n${err}")
      endif()
    endforeach()
  endforeach()
  if(NOT EXISTS "${OUT}/restore/${task}/metrics.csv")
    message(FATAL_ERROR "missing ${OUT}/restore/${task}/metrics.csv")
  endif()
endforeach()
if(NOT EXISTS "${OUT}/restore/summary.md")
  message(FATAL_ERROR "missing ${OUT}/restore/summary.md")
endif()

execute_process(COMMAND "${DIFFPOST}" restore --model "${folder}" --task sr --steps 2 --out "${OUT}/wrong"
                        "${WRONG_SIZE}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "is 24x20 but the model works on 32x32 images" OR EXISTS "${OUT}/wrong")
  message(FATAL_ERROR "an image of another size should be refused (exit ${rc}):\n${err}")
endif()

# sample, denoise and eval load the folder through the same code: each runs and writes its images.
function(expect_run name expected_file)
  execute_process(COMMAND "${DIFFPOST}" ${name} --model "${folder}" ${ARGN} --threads 2 --seed 1
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  string(REGEX MATCHALL "diffpost ${name}: [^\n]*" reports "${err}")
  list(FILTER reports EXCLUDE REGEX "explain less than half of the measurement")
  if(NOT (rc EQUAL 0 OR (rc EQUAL 1 AND reports STREQUAL "")) OR NOT EXISTS "${expected_file}")
    message(FATAL_ERROR "diffpost ${name} --model FOLDER (exit ${rc}) did not write ${expected_file}:\n${out}\n${err}")
  endif()
endfunction()
expect_run(sample "${OUT}/sample/sample_0001.png" --num-images 2 --batch 2 --steps 2 --out "${OUT}/sample")
expect_run(denoise "${OUT}/denoise/cifar_0_denoised.png" --sigma 0.2 --out "${OUT}/denoise"
           "${folder}/images")
expect_run(eval "${OUT}/eval/results.md" --task sr --methods dps,ddnm --steps 2 --batch 2 --out "${OUT}/eval"
           "${folder}/images")

# A folder's config.json and scheduler config decide: --config and --beta-schedule are refused.
function(expect_refusal expected)
  execute_process(COMMAND "${DIFFPOST}" restore --model "${folder}" ${ARGN} --task sr --steps 2
                          --out "${OUT}/refused" "${folder}/images" RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  if(rc EQUAL 0 OR NOT err MATCHES "${expected}" OR EXISTS "${OUT}/refused")
    message(FATAL_ERROR "restore --model FOLDER ${ARGN} should be refused (exit ${rc}):\n${err}")
  endif()
endfunction()
expect_refusal("is a diffusers folder, which holds its own config.json; drop --config" --config
               "${folder}/unet/config.json")
expect_refusal("--beta-schedule is for ADM checkpoints; the diffusers folder .*: drop --beta-schedule"
               --beta-schedule cosine)
message(STATUS "diffusers folder end to end: ok\n${restore_log}")
