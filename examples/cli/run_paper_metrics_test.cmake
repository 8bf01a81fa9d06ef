# ctest helper: LPIPS, FID and KID in `diffpost restore` and `diffpost eval`, and their agreement with
# `diffpost score` on the files the run wrote. The weights are random, in the layouts users have
# (write_metric_weights_fixture): VGG16 and the FID Inception in a $TORCH_HOME the test makes, where the default
# (auto) finds them; the lpips heads are the committed tests/data/metrics/lpips/vgg_heads_legacy.pth, by flag.
#   cmake -DDIFFPOST=<exe> -DFIXTURE=<exe> -DMODEL=<pt> -DCONFIG=<yaml> -DHEADS=<pth> -DOUT=<dir> -P this
file(REMOVE_RECURSE "${OUT}")
include(${CMAKE_CURRENT_LIST_DIR}/run_tool.cmake)

# Two decimal numbers agree when they differ by at most `tolerance` units of their last printed digit (both are
# printed with the same number of decimals; CMake's math is integer only).
function(expect_close what first second tolerance)
  string(REPLACE "." "" first_units "${first}")
  string(REPLACE "." "" second_units "${second}")
  math(EXPR difference "${first_units} - ${second_units}")
  if(difference LESS -${tolerance} OR difference GREATER ${tolerance})
    message(FATAL_ERROR "${what}: restore gives ${first}, score gives ${second}")
  endif()
  message(STATUS "${what}: restore ${first}, score ${second}")
endfunction()

run_tool(ignored "${FIXTURE}" "${OUT}/torch")
set(ENV{TORCH_HOME} "${OUT}/torch")
set(model --model "${MODEL}" --config "${CONFIG}" --threads 2)

# restore: LPIPS by flag (the heads), FID and KID found in $TORCH_HOME.
run_tool(restored "${DIFFPOST}" restore --task sr --test-set 4 --steps 3 --seed 2 ${model} --lpips-linear "${HEADS}"
    --out "${OUT}/restore")
foreach(expected "LPIPS \\(vgg\\) from .*vgg16-397923af.pth and .*vgg_heads_legacy.pth"
                 "FID and KID from .*pt_inception-2015-12-05-6726825d.pth" "sr: DPS PSNR .*, LPIPS \\(vgg\\) .*, FID .*, KID")
  if(NOT restored MATCHES "${expected}")
    message(FATAL_ERROR "restore printed no '${expected}'")
  endif()
endforeach()
file(STRINGS "${OUT}/restore/sr/metrics.csv" rows)
list(GET rows 0 header)
if(NOT header STREQUAL "image,method,sample,psnr,ssim,lpips,fid,kid")
  message(FATAL_ERROR "metrics.csv header: ${header}")
endif()
set(number "-?[0-9]+\\.[0-9]+")
list(FILTER rows INCLUDE REGEX "^mean,dps,")
if(NOT rows MATCHES "^mean,dps,,${number},${number},(${number}),(${number}),(${number})$")
  message(FATAL_ERROR "metrics.csv has no mean row of dps with LPIPS, FID and KID: ${rows}")
endif()
set(restore_lpips "${CMAKE_MATCH_1}")
set(restore_fid "${CMAKE_MATCH_2}")
set(restore_kid "${CMAKE_MATCH_3}")
file(READ "${OUT}/restore/summary.md" summary)
if(NOT summary MATCHES "\\| DPS SSIM \\| DPS LPIPS \\| DPS FID \\| DPS KID \\| naive PSNR")
  message(FATAL_ERROR "summary.md has no LPIPS, FID and KID columns:\n${summary}")
endif()

# score on the written files gives the same numbers: the truths and the restorations in two folders, paired by name.
file(MAKE_DIRECTORY "${OUT}/score/truth" "${OUT}/score/restored")
file(GLOB truths "${OUT}/restore/sr/*_truth.png")
foreach(truth IN LISTS truths)
  get_filename_component(file "${truth}" NAME)
  string(REPLACE "_truth.png" "" name "${file}")
  file(COPY_FILE "${truth}" "${OUT}/score/truth/${name}.png")
  file(COPY_FILE "${OUT}/restore/sr/${name}_dps.png" "${OUT}/score/restored/${name}.png")
endforeach()
run_tool(scored "${DIFFPOST}" score "${OUT}/score/truth" "${OUT}/score/restored" --lpips vgg --lpips-linear "${HEADS}"
    --kid --threads 2)
if(NOT scored MATCHES "mean of 4: [^\n]*LPIPS \\(vgg\\) (${number})")
  message(FATAL_ERROR "score printed no mean LPIPS")
endif()
set(score_lpips "${CMAKE_MATCH_1}")
if(NOT scored MATCHES "FID: (${number})\nKID: (${number})")
  message(FATAL_ERROR "score printed no FID and KID")
endif()
set(score_fid "${CMAKE_MATCH_1}")
set(score_kid "${CMAKE_MATCH_2}")
expect_close("mean LPIPS (4 decimals)" "${restore_lpips}" "${score_lpips}" 1)
# FID from features batched differently: equal to 1e-4 (score prints 4 decimals, restore's CSV 6).
string(REGEX REPLACE "([0-9][0-9])$" "" restore_fid_4 "${restore_fid}")
expect_close("FID (4 decimals)" "${restore_fid_4}" "${score_fid}" 2)
expect_close("KID (6 decimals)" "${restore_kid}" "${score_kid}" 2)

# eval: LPIPS by flag, FID off; the results gain LPIPS columns only.
run_tool(evaluated "${DIFFPOST}" eval --task sr --methods dps --test-set 4 --steps 3 ${model} --lpips-linear "${HEADS}"
    --fid off --out "${OUT}/eval")
file(STRINGS "${OUT}/eval/results.csv" results)
list(GET results 0 header)
if(NOT header STREQUAL "sweep,value,task,method,images,psnr_mean,psnr_std,ssim_mean,ssim_std,lpips_mean,lpips_std,frechet,forwards,backwards,seconds")
  message(FATAL_ERROR "eval results.csv header: ${header}")
endif()
file(STRINGS "${OUT}/eval/per_image.csv" per_image)
list(GET per_image 0 header)
if(NOT header STREQUAL "sweep,value,task,method,image,psnr,ssim,lpips")
  message(FATAL_ERROR "eval per_image.csv header: ${header}")
endif()
file(READ "${OUT}/eval/results.md" results_md)
if(NOT results_md MATCHES "\\| SSIM \\| LPIPS \\| FD \\|")
  message(FATAL_ERROR "results.md has no LPIPS column:\n${results_md}")
endif()
