#!/usr/bin/env bash
# CPU seconds (user + system) to compile one translation unit that includes a diffpost header, with the Release
# flags of the CMake build and no precompiled header; three runs, each printed, then the median. Also prints how
# many headers and preprocessed lines the unit pulls in, and whether stb, zlib or yaml-cpp are among them.
#   benchmarks/compile_time.sh [SOURCE_ROOT] [HEADER]      (defaults: this checkout, diffpost/dps.hpp)
# To compare with an older version: git worktree add /tmp/old <rev>; benchmarks/compile_time.sh /tmp/old
set -euo pipefail
root=$(realpath "${1:-$(dirname "$0")/..}")
header=${2:-diffpost/dps.hpp}
tu=$(mktemp --suffix=.cpp)
object=$(mktemp --suffix=.o)
trap 'rm -f "$tu" "$object"' EXIT
printf '#include <%s>\nint main() { return 0; }\n' "$header" > "$tu"
flags=(-std=gnu++20 -O3 -DNDEBUG -D_GLIBCXX_USE_CXX11_ABI=1 -DFMT_HEADER_ONLY=1 -I"$root/include"
       -isystem /usr/include/torch/csrc/api/include -isystem /usr/include/eigen3 -isystem /usr/include/stb)
dependencies=$(g++ "${flags[@]}" -M "$tu")
lines=$(g++ "${flags[@]}" -E "$tu" | wc -l)
echo "$root: <$header> includes $(tr ' ' '\n' <<< "$dependencies" | grep -c '\.h') headers, $lines preprocessed lines;" \
  "stb headers: $(grep -o 'stb/[a-z_]*\.h' <<< "$dependencies" | sort -u | wc -l)," \
  "zlib.h: $(grep -o 'zlib\.h' <<< "$dependencies" | sort -u | wc -l)," \
  "yaml-cpp headers: $(grep -o 'yaml-cpp/[a-z_/]*\.h' <<< "$dependencies" | sort -u | wc -l)"
times=()
for run in 1 2 3; do
  seconds=$({ /usr/bin/time -f "%U %S" g++ "${flags[@]}" -c "$tu" -o "$object"; } 2>&1 | tail -1 | awk '{print $1 + $2}')
  times+=("$seconds")
  echo "run $run: $seconds s"
done
printf '%s\n' "${times[@]}" | sort -n | sed -n 2p | xargs echo "median (s):"
