#!/bin/bash
# ab.sh REPS BIN_A BIN_B: interleaved start.sh 100 runs; prints one line per start.
START=/work/main/docs/bench-results/binary-size-2026-11-30/start.sh
for r in $(seq $1); do
  for b in "$2" "$3"; do
    out=$(BIN=$b timeout 300 bash $START 100 2>&1 | tr '\n' ' ')
    echo "$(basename $b) r$r: $out"
    sleep 3
  done
done
