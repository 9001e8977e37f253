#!/bin/bash
# inter.sh N: N interleaved rounds of /tmp/n2p-fix4 (1a3644d) and /tmp/n2p-cut10
for r in $(seq 1 $1); do
  for b in fix4 cut10; do TAG=i$r ./rounds.sh $b 1; done
done
