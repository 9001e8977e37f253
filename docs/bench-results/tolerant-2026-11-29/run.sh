#!/bin/bash
# n2p's `tolerant` controller against noq's Cubic, TCP Cubic (socat) and ssh-ng (TCP BBR) on
# every emulated link, then fairness against TCP and loopback. Logs to $OUT/*.log.
cd /work/main
OUT=docs/bench-results/tolerant-2026-11-29
B=target/release/n2p-bench
N=target/release/n2p
REPS=${REPS:-3}
run() { # name rtt rate loss mib
  local name=$1; mkdir -p $OUT/$name
  echo "== $name $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
  $B --no-build --n2p $N --n2p-congestion cubic --n2p-alt-congestion tolerant --no-dumbpipe \
     --variants n2p,n2p-alt,socat,ssh-ng --sections wan --netem-reps $REPS --netem-w1-mib $5 \
     --wan-rtt-ms $2 --wan-rate-mbit $3 --wan-loss $4 --wan-tcp-cc bbr --wan-socat-cc cubic \
     --out $OUT/$name > $OUT/$name/run.log 2>&1
  echo "   done $(date -u +%H:%M:%S) rc $? load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
}
for link in ${LINKS:-lan wan wan-0.5 wan-2 far far-0.5 far-2}; do
  case $link in
    lan) run lan 1 1000 0 32;;
    wan) run wan 30 100 0 32;;
    wan-0.5) run wan-0.5 30 100 0.5 32;;
    wan-2) run wan-2 30 100 2 16;;
    far) run far 120 20 0 16;;
    far-0.5) run far-0.5 120 20 0.5 16;;
    far-2) run far-2 120 20 2 16;;
  esac
done
if [ -z "$NOFAIR" ]; then
  echo "== fairness $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
  $B fairness --n2p $N --n2p-cc cubic,tolerant --tcp-cc cubic,bbr --links 30/100,120/20 \
     --secs 30 --warmup-secs 5 --out $OUT/fairness > $OUT/fairness.log 2>&1
  echo "   done $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
fi
if [ -z "$NOLOOP" ]; then
  echo "== loopback $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
  mkdir -p $OUT/loopback
  $B --no-build --n2p $N --n2p-congestion cubic --n2p-alt-congestion tolerant --no-dumbpipe --quick \
     --variants n2p,n2p-alt,socat --sections transfers --workloads W1,W3 --reps $REPS \
     --out $OUT/loopback > $OUT/loopback/run.log 2>&1
  echo "   done $(date -u +%H:%M:%S) rc $? load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/runs.log
fi
