#!/bin/bash
# HyStart++ where the queue is deeper than the path: 30 ms / 100 Mbit/s with a drop-tail
# queue of QUEUE bytes (1500000: four bandwidth-delay products, 120 ms; 750000: two), W1
# 64 MiB. Every invocation starts fresh processes, so each one's single round is a
# connection's first slow start. `n2p` = NEW, `n2p-alt` = OLD, socat over TCP BBR.
# usage: NEW=... OLD=... BENCH=... QUEUE=... deep-queue.sh  (reports in deep-queue-QUEUE-i)
cd "$(dirname "$0")/../../.."
O=docs/bench-results/hystart-2026-12-01
for i in 1 2 3; do
  timeout 600 $BENCH --no-build --n2p $NEW --n2p-alt $OLD --no-dumbpipe \
    --variants n2p,n2p-alt,socat --workloads W1 --sections wan --netem-reps 1 \
    --netem-w1-mib 64 --wan-rtt-ms 30 --wan-rate-mbit 100 --wan-queue-bytes $QUEUE \
    --wan-tcp-cc bbr --wan-socat-cc bbr --out $O/deep-queue-$QUEUE-$i > /tmp/deep-queue-$i.log 2>&1
  echo "$i rc=$? $(date +%T)" >> /tmp/deep-queue.progress
done
