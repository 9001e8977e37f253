#!/bin/bash
# Far links (120 ms, 20 Mbit/s; 0, 0.5, 2 % loss) with every workload, then WAN 0 % with W1 64 MiB.
cd /work/main
B=target/release/n2p-bench
N=/tmp/n2p-hello
O=docs/bench-results/links-far-2026-11-29
run() { # tag rtt rate loss w1mib
  $B --no-build --n2p $N --no-dumbpipe --variants n2p,mesh,socat,ssh-ng --sections wan \
     --netem-reps 2 --netem-w1-mib $5 --wan-rtt-ms $2 --wan-rate-mbit $3 --wan-loss $4 \
     --wan-tcp-cc bbr --wan-socat-cc bbr --out $O/$1 > /tmp/far-$1.log 2>&1
  echo "$1 rc=$? $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> /tmp/far.progress
}
date +%T > /tmp/far.progress
run far-120ms-20mbit-0pct 120 20 0 16
run far-120ms-20mbit-0.5pct 120 20 0.5 16
run far-120ms-20mbit-2pct 120 20 2 16
run wan-30ms-100mbit-0pct-64mib 30 100 0 64
echo done >> /tmp/far.progress
