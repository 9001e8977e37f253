#!/bin/bash
# dumbpipe as an anchor on the emulated links: W1 (32 MiB)..W4 and a warm ping.
cd /work/main
cargo build -q --release -p n2p-bench
B=target/release/n2p-bench
O=docs/bench-results/dumbpipe-links-2026-11-29
run() { # tag rtt rate loss
  $B --no-build --n2p /tmp/n2p-hello --dumbpipe target/n2p-bench-tools/bin/dumbpipe \
     --variants n2p,dumbpipe,socat,ssh-ng --sections wan --workloads W1,W2,W3,W4,ping \
     --netem-reps 2 --netem-w1-mib 32 --wan-rtt-ms $2 --wan-rate-mbit $3 --wan-loss $4 \
     --wan-tcp-cc bbr --wan-socat-cc bbr --out $O/$1 > /tmp/dp-$1.log 2>&1
  echo "$1 rc=$? $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> /tmp/dp.progress
}
date +%T > /tmp/dp.progress
run wan-30ms-100mbit-0pct 30 100 0
run wan-30ms-100mbit-2pct 30 100 2
echo done >> /tmp/dp.progress
