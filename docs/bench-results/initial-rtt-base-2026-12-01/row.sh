#!/bin/bash
# A 120 ms / 20 Mbit/s row of ../links-all-2026-12-01/run.sh again, with the fix (N2P):
# every workload, the pair and the mesh, socat and ssh-ng over TCP BBR, 2 rounds.
# usage: N2P=... row.sh LOSS...   (LOSS in %: 2 on 2026-12-01 12:55, then 0 and 0.5)
cd "$(dirname "$0")/../../.."
for loss in "${@:-2}"; do
  timeout 2400 ${BENCH:-/tmp/tgt-s/release/n2p-bench} --no-build --n2p $N2P --no-dumbpipe \
    --variants n2p,mesh,socat,ssh-ng --sections wan --netem-reps 2 --netem-w1-mib 32 \
    --wan-rtt-ms 120 --wan-rate-mbit 20 --wan-loss $loss --wan-tcp-cc bbr --wan-socat-cc bbr \
    --out docs/bench-results/initial-rtt-base-2026-12-01/row-far-120ms-20mbit-${loss}pct \
    > /tmp/row-$loss.log 2>&1
  echo "$loss rc=$? $(date +%T)" >> /tmp/row.progress
done
