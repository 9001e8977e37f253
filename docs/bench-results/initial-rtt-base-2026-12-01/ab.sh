#!/bin/bash
# A/B of the loss judge's base RTT on the far lossy links: `n2p` = FIX (the judge ignores the
# initial RTT estimate), `n2p-alt` = OLD (9004d3a), socat and ssh-ng over TCP BBR, same rounds.
# usage: FIX=... OLD=... BENCH=... ab.sh   (progress in /tmp/irtt.progress)
cd "$(dirname "$0")/../../.."
O=docs/bench-results/initial-rtt-base-2026-12-01
for loss in 2 0.5; do
  timeout 1800 $BENCH --no-build --n2p $FIX --n2p-alt $OLD --no-dumbpipe \
    --variants n2p,n2p-alt,socat,ssh-ng --workloads W1,W2,P1,P2 --sections wan --netem-reps 2 \
    --netem-w1-mib 32 --wan-rtt-ms 120 --wan-rate-mbit 20 --wan-loss $loss --wan-tcp-cc bbr \
    --wan-socat-cc bbr --out $O/far-120ms-20mbit-${loss}pct > /tmp/irtt-$loss.log 2>&1
  echo "$loss rc=$? $(date +%T)" >> /tmp/irtt.progress
done
echo done >> /tmp/irtt.progress
