#!/bin/bash
# Every link of issue 10 point 4 with every workload, one build, one run: 30 ms / 100 Mbit/s,
# 120 ms / 20 Mbit/s and 1 ms / 1 Gbit/s, each with 0, 0.5 and 2 % random loss. Variants:
# the n2p pair, the two-node mesh, socat and ssh-ng (both over TCP BBR), plus `direct`.
# usage: BENCH=... N2P=... run.sh   (progress in /tmp/links-all.progress)
cd "$(dirname "$0")/../../.."
B=${BENCH:-/tmp/tgt-s/release/n2p-bench}; N=${N2P:-/tmp/tgt-s/release/n2p}
O=docs/bench-results/links-all-2026-12-01
run() { # tag rtt rate loss w1mib
  timeout 2400 $B --no-build --n2p $N --no-dumbpipe --variants n2p,mesh,socat,ssh-ng \
     --sections wan --netem-reps 2 --netem-w1-mib $5 --wan-rtt-ms $2 --wan-rate-mbit $3 \
     --wan-loss $4 --wan-tcp-cc bbr --wan-socat-cc bbr --out $O/$1 > /tmp/links-all-$1.log 2>&1
  echo "$1 rc=$? $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> /tmp/links-all.progress
}
date +%T > /tmp/links-all.progress
run wan-30ms-100mbit-0pct 30 100 0 64
run wan-30ms-100mbit-0.5pct 30 100 0.5 64
run wan-30ms-100mbit-2pct 30 100 2 64
run far-120ms-20mbit-0pct 120 20 0 32
run far-120ms-20mbit-0.5pct 120 20 0.5 32
run far-120ms-20mbit-2pct 120 20 2 32
run lan-1ms-1gbit-0pct 1 1000 0 64
run lan-1ms-1gbit-0.5pct 1 1000 0.5 64
run lan-1ms-1gbit-2pct 1 1000 2 64
echo done >> /tmp/links-all.progress
