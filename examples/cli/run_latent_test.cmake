# ctest helper: the tool with a latent diffusion model (the bundled Fashion-MNIST LDM, MODEL with its .yaml
# twin): `eval` runs the three latent methods on two test images and writes one finite row per method, with
# LatentDAPS ahead of the naive inverse; `restore --method latent-daps` gives eval's numbers image by image
# (the same per-image seeds); `sample` decodes latent samples into 28x28 PNGs; `describe` names the latent
# shape.
#   cmake -DDIFFPOST=<exe> -DMODEL=<ckpt> -DOUT=<dir> -P this
cmake_policy(SET CMP0057 NEW)  # if(... IN_LIST ...)
file(REMOVE_RECURSE "${OUT}")
set(common --task sr --test-set 2 --steps 20 --batch 2 --threads 2 --seed 3 --model "${MODEL}"
           --latent-daps-chain-steps 12 --resample-pixel-iterations 100 --resample-latent-iterations 50)
execute_process(COMMAND "${DIFFPOST}" eval ${common} --methods latent-daps,psld,resample --classifier none
                        --out "${OUT}/eval" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "diffpost eval with the latent methods failed (${rc}):\n${out}\n${err}")
endif()
if(NOT out MATCHES "latent diffusion")
  message(FATAL_ERROR "eval's first line does not say the model is a latent diffusion model:\n${out}")
endif()
file(STRINGS "${OUT}/eval/results.csv" rows)
set(number "-?[0-9]+\\.[0-9]+")
foreach(method naive latent-daps psld resample)
  set(matching ${rows})
  list(FILTER matching INCLUDE REGEX "^,,sr,${method},2,${number},${number},${number},${number},")
  list(LENGTH matching count)
  if(NOT count EQUAL 1)
    message(FATAL_ERROR "results.csv: no row 'sr,${method}' with finite PSNR and SSIM:\n${rows}")
  endif()
  list(GET matching 0 row)
  string(REGEX REPLACE "^,,sr,${method},2,(${number}),.*" "\\1" psnr_${method} "${row}")
endforeach()
message(STATUS "PSNR (dB): naive ${psnr_naive}, latent-daps ${psnr_latent-daps}, psld ${psnr_psld}, "
               "resample ${psnr_resample}")
if(NOT psnr_latent-daps GREATER psnr_naive)
  message(FATAL_ERROR "LatentDAPS (${psnr_latent-daps} dB) is not ahead of the naive inverse (${psnr_naive} dB)")
endif()

# The same LatentDAPS run through `restore`: identical per-image PSNR and SSIM.
execute_process(COMMAND "${DIFFPOST}" restore ${common} --method latent-daps --out "${OUT}/restore"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "diffpost restore --method latent-daps failed (${rc}):\n${out}\n${err}")
endif()
file(STRINGS "${OUT}/restore/sr/metrics.csv" restore_rows REGEX "^fmnist_test_[0-9]+,latent-daps,0,")
file(STRINGS "${OUT}/eval/per_image.csv" eval_rows REGEX "^,,sr,latent-daps,")
list(LENGTH restore_rows restore_count)
if(NOT restore_count EQUAL 2 OR NOT EXISTS "${OUT}/restore/sr/fmnist_test_00001_latent-daps.png")
  message(FATAL_ERROR "restore wrote ${restore_count} LatentDAPS rows (expected 2) or no images: ${restore_rows}")
endif()
foreach(row IN LISTS restore_rows)
  string(REGEX REPLACE "^([^,]+),latent-daps,0,(${number}),(${number})$" "\\1,\\2,\\3" key "${row}")
  if(NOT ",,sr,latent-daps,${key}" IN_LIST eval_rows)
    message(FATAL_ERROR "restore's row ${row} has no identical row in eval's per_image.csv:\n${eval_rows}")
  endif()
endforeach()

# Unconditional samples: latents decoded to images of the model's size.
execute_process(COMMAND "${DIFFPOST}" sample --num-images 2 --steps 5 --threads 2 --model "${MODEL}"
                        --out "${OUT}/sample" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT EXISTS "${OUT}/sample/sample_0001.png")
  message(FATAL_ERROR "diffpost sample with the latent model failed (${rc}):\n${out}\n${err}")
endif()
file(READ "${OUT}/sample/sample_0001.png" header LIMIT 24 HEX)
# PNG IHDR: width and height, 4 bytes each, at byte 16.
if(NOT header MATCHES "0000001c0000001c$")
  message(FATAL_ERROR "sample_0001.png is not 28x28 (IHDR ${header})")
endif()

execute_process(COMMAND "${DIFFPOST}" describe "${MODEL}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "images 1x28x28, latents 3x14x14")
  message(FATAL_ERROR "diffpost describe of the latent model (${rc}):\n${out}\n${err}")
endif()
message(STATUS "latent diffusion in the tool: ok")
