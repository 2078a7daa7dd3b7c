#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_<name>.cpp) with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer in the instrumented tree build-asan (scripts/tool_trees.sh, shared
# with the ASan+UBSan run of the test suite), and runs each one for BN_FUZZ_SECONDS
# (default 60) from its committed seed corpus (tests/fuzz/corpus/<name>/), all targets at
# once. New inputs go to the tree's working corpus, never into the source tree; a crash leaves
# its input in <tree>/fuzz-artifacts/ and fails the run: add that file to the seed corpus as
# a regression (the normal suite replays it, test fuzz.replay.<name>) and fix the bug.
#   bash scripts/fuzz.sh            # every target, 60 s each
#   BN_FUZZ_SECONDS=600 bash scripts/fuzz.sh api
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_EACH=${BN_FUZZ_SECONDS:-60}
source "$ROOT/scripts/tool_trees.sh"
TREE=$ASAN_TREE

echo "== fuzz: configuring and building the fuzz targets in $TREE (clang, address+undefined+fuzzer)"
configure_asan_tree

names=()
if [ $# -gt 0 ]; then
  names=("$@")
else
  for f in "$ROOT"/tests/fuzz/fuzz_*.cpp; do
    n=$(basename "$f" .cpp)
    names+=("${n#fuzz_}")
  done
fi
targets=()
for n in "${names[@]}"; do targets+=("fuzz_$n"); done
cmake --build "$TREE" -j"$(nproc)" --target "${targets[@]}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
mkdir -p "$TREE/fuzz-artifacts"
pids=()
for n in "${names[@]}"; do
  seeds="$ROOT/tests/fuzz/corpus/$n"
  work="$TREE/fuzz-corpus/$n"
  mkdir -p "$work" "$seeds"
  echo "== fuzz: fuzz_$n for ${SECONDS_EACH} s (seeds: $(find "$seeds" -type f | wc -l) files)"
  # -rss_limit_mb and -malloc_limit_mb: the library must refuse absurd sizes rather than
  # allocate them; -timeout: one input must not take more than 20 s.
  "$TREE/tests/fuzz/fuzz_$n" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -timeout=20 -print_final_stats=1 -artifact_prefix="$TREE/fuzz-artifacts/$n-" \
    "$work" "$seeds" >"$TREE/fuzz-$n.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!names[@]}"; do
  n=${names[$i]}
  if wait "${pids[$i]}"; then
    echo "== fuzz: fuzz_$n clean: $(grep -E 'stat::number_of_executed_units' "$TREE/fuzz-$n.log" | awk '{print $2}') runs," \
      "$(grep -E 'stat::new_units_added' "$TREE/fuzz-$n.log" | awk '{print $2}') new inputs, corpus $(find "$TREE/fuzz-corpus/$n" -type f | wc -l) files"
  else
    status=1
    echo "== fuzz: fuzz_$n FAILED; the end of its log ($TREE/fuzz-$n.log):"
    tail -n 60 "$TREE/fuzz-$n.log"
    echo "== the input is in $TREE/fuzz-artifacts/ (add it to tests/fuzz/corpus/$n/ as a regression)"
  fi
done
exit $status
