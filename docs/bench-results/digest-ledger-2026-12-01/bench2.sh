#!/bin/bash
# bench2.sh: the bench's mesh section, interleaved: n2p-ledger2 (after), n2p-final (before), n2p-ledger2.
i=0
for b in ledger2 final ledger2; do
  i=$((i+1)); out=/tmp/abl/bench2-$b-$i; mkdir -p $out
  timeout 1200 /tmp/tgt-s/release/n2p-bench --n2p /tmp/n2p-$b --sections mesh --mesh-sizes 8,32,100 --mesh-reps 3 --out $out > $out/log 2>&1
  echo "== $b $i"; grep -A5 "^| nodes" $out/results.md | tail -3
done
