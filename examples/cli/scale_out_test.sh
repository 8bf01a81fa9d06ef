#!/usr/bin/env bash
# ctest helper for sharded, resumable and interrupted runs of `diffpost restore` on the tiny model:
#  - 3 processes with torchrun's RANK/WORLD_SIZE/LOCAL_RANK at once, a Slurm array of 2 and an srun step of
#    2 (SLURM_PROCID/SLURM_NTASKS), each merged and compared file by file with one process;
#  - merge refusing missing shards and shards of different plans;
#  - a run killed (SIGKILL) midway, one file truncated, finished with --resume: identical;
#  - SIGINT: exit 130, a message, then --resume: identical;
#  - SIGINT during --force: the folder is as it was; a completed --force replaces the run.
#   bash scale_out_test.sh <diffpost> <model.pt> <config.yaml> <out dir>
set -euo pipefail
exe=$1
model=$2
config=$3
out=$4
rm -rf "$out"
mkdir -p "$out"
common=(restore --task box-inpaint,sr --test-set 16 --batch 2 --steps 6 --seed 4 --threads 1
        --model "$model" --config "$config")

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# Runs diffpost; passes on exit 0, or on exit 1 when every stderr line is the warning about results that
# explain too little of their measurement (the tiny model is untrained). $1 names the log.
run() {
  local log=$out/$1.log rc=0
  shift
  "$exe" "$@" >"$log.out" 2>"$log.err" || rc=$?
  if [[ $rc -ne 0 ]]; then
    if [[ $rc -ne 1 ]] || grep "^diffpost " "$log.err" | grep -v "explain less than half of the measurement" |
      grep -q .; then
      cat "$log.err" >&2
      fail "diffpost $* exited $rc"
    fi
  fi
}

# Every file of $1 and $2 except .diffpost/ and the logs is identical; summary.md up to its time column.
same_outputs() {
  local a=$1 b=$2
  diff -r -q -x .diffpost -x '*.log.*' "$a" "$b" -x summary.md || fail "$b differs from $a"
  diff <(sed -E 's/\| [0-9.]+ \|$/| (time) |/' "$a/summary.md") \
       <(sed -E 's/\| [0-9.]+ \|$/| (time) |/' "$b/summary.md") || fail "$b/summary.md differs from $a"
  [[ -z $(find "$b/.diffpost" -maxdepth 1 -name 'staging-*') ]] || fail "$b keeps a staging folder"
}

records() { find "$1/.diffpost" -name 'batch-*.pt' 2>/dev/null | wc -l; }

# Starts diffpost in the background and waits until $1 holds $2 batch records (under .diffpost/records, or
# .diffpost/staging-*/.diffpost/records under --force).
start_and_wait() {
  local dir=$1 wanted=$2
  shift 2
  "$exe" "$@" >"$out/background.out" 2>"$out/background.err" &
  pid=$!
  for _ in $(seq 600); do
    [[ $(records "$dir") -ge $wanted ]] && return 0
    kill -0 "$pid" 2>/dev/null || fail "diffpost $* ended before writing $wanted records"
    sleep 0.05
  done
  fail "diffpost $* wrote no $wanted records in 30 s"
}

# One process: the reference.
run single "${common[@]}" --out "$out/single"
[[ -f $out/single/summary.md ]] || fail "the single run wrote no summary.md"

# torchrun: 3 processes at once into one folder, then merge.
pids=()
for rank in 0 1 2; do
  RANK=$rank WORLD_SIZE=3 LOCAL_RANK=$rank "$exe" "${common[@]}" --shard auto --out "$out/torchrun" \
    >"$out/torchrun-$rank.log.out" 2>"$out/torchrun-$rank.log.err" &
  pids+=($!)
done
for rank in 0 1 2; do
  wait "${pids[$rank]}" || fail "torchrun rank $rank failed: $(cat "$out/torchrun-$rank.log.err")"
  grep -q "shard $rank/3 done (--shard auto (torchrun: RANK=$rank, WORLD_SIZE=3))" "$out/torchrun-$rank.log.out" ||
    fail "rank $rank did not report its shard: $(cat "$out/torchrun-$rank.log.out")"
done
[[ ! -f $out/torchrun/summary.md ]] || fail "a shard wrote summary.md before the merge"
run merge-torchrun merge "$out/torchrun"
same_outputs "$out/single" "$out/torchrun"

# Slurm: an array of 2 tasks, and an srun step of 2 tasks.
for id in 0 1; do
  SLURM_ARRAY_TASK_ID=$id SLURM_ARRAY_TASK_COUNT=2 SLURM_ARRAY_TASK_MIN=0 run "array-$id" "${common[@]}" \
    --shard auto --out "$out/slurm-array"
  SLURM_PROCID=$id SLURM_NTASKS=2 run "srun-$id" "${common[@]}" --shard auto --out "$out/srun"
done
run merge-array merge "$out/slurm-array"
same_outputs "$out/single" "$out/slurm-array"
run merge-srun merge "$out/srun"
same_outputs "$out/single" "$out/srun"

# Merge refuses missing shards (naming them) and shards of different plans.
run partial-0 "${common[@]}" --shard 0/3 --out "$out/partial"
run partial-2 "${common[@]}" --shard 2/3 --out "$out/partial"
if "$exe" merge "$out/partial" >/dev/null 2>"$out/merge-missing.err"; then fail "merge accepted a missing shard"; fi
grep -q "is incomplete: .*run shard(s) 1/3 (with --resume) first" "$out/merge-missing.err" ||
  fail "merge of a missing shard: $(cat "$out/merge-missing.err")"
run partial-other "${common[@]}" --shard 1/2 --resume --out "$out/partial"
if "$exe" merge "$out/partial" >/dev/null 2>"$out/merge-overlap.err"; then fail "merge accepted overlapping shards"; fi
grep -q "different shard counts (2 and 3): the shards overlap" "$out/merge-overlap.err" ||
  fail "merge of overlapping shards: $(cat "$out/merge-overlap.err")"

# Preemption: SIGKILL midway, a finished image truncated, then --resume redoes what is missing.
start_and_wait "$out/killed" 3 "${common[@]}" --out "$out/killed"
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
[[ ! -f $out/killed/summary.md ]] || fail "the killed run got to its summary; nothing was left to resume"
first_dps=$(find "$out/killed" -name '*_dps.png' | sort | head -n 1)
truncate -s 20 "$first_dps"
run resumed "${common[@]}" --resume --out "$out/killed"
grep -q "resumed: [0-9]* finished batch(es) kept" "$out/resumed.log.out" || fail "--resume kept no batch"
same_outputs "$out/single" "$out/killed"

# SIGINT: a clean stop with exit status 130 and a message, then --resume.
start_and_wait "$out/interrupted" 2 "${common[@]}" --out "$out/interrupted"
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
[[ $rc -eq 130 ]] || fail "SIGINT: exit status $rc, expected 130"
grep -q "interrupted (SIGINT): the finished batches are kept; rerun with --resume to finish" \
  "$out/background.err" || fail "SIGINT message: $(cat "$out/background.err")"
run interrupted-resumed "${common[@]}" --resume --out "$out/interrupted"
same_outputs "$out/single" "$out/interrupted"

# SIGINT during --force: the folder stays as it was, byte for byte; a finished --force replaces the run.
cp -a "$out/single" "$out/forced"
start_and_wait "$out/forced" $(($(records "$out/forced") + 2)) "${common[@]}" --seed 9 --force --out "$out/forced"
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
[[ $rc -eq 130 ]] || fail "SIGINT under --force: exit status $rc, expected 130"
grep -q "'$out/forced' is as it was" "$out/background.err" || fail "--force SIGINT: $(cat "$out/background.err")"
diff -r "$out/single" "$out/forced" -x '*.log.*' || fail "an interrupted --force run changed the folder"
run forced "${common[@]}" --seed 9 --force --out "$out/forced"
grep -q -- "--seed 9" "$out/forced/summary.md" || fail "the finished --force run did not replace summary.md"
cmp -s "$out/single/sr/grid.png" "$out/forced/sr/grid.png" && fail "the --force run kept the old grid"
[[ -z $(find "$out/forced/.diffpost" -maxdepth 1 -name 'staging-*') ]] || fail "--force left its staging folder"
echo "scale-out: ok"
