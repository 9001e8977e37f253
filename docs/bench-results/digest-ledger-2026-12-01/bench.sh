#!/bin/bash
# bench.sh: the bench's mesh section, interleaved, n2p-final (before) and n2p-ledger (after), twice each.
for r in 1 2; do
  for b in final ledger; do
    out=/tmp/abl/bench-$b-$r; mkdir -p $out
    timeout 1200 /tmp/tgt-s/release/n2p-bench --n2p /tmp/n2p-$b --sections mesh --mesh-sizes 8,32,100 --mesh-reps 3 --out $out > $out/log 2>&1
    echo "== $b $r"; grep -A5 "^| nodes" $out/results.md | tail -3
  done
done
