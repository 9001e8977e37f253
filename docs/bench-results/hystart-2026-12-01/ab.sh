#!/bin/bash
# A/B of HyStart++ in `tolerant`'s Cubic: `n2p` = NEW (n2p's Cubic with HyStart++),
# `n2p-alt` = OLD (noq's Cubic inside `tolerant`, 4db0dd0), socat over TCP BBR as a
# reference, same rounds. Then loopback, and fairness against TCP Cubic.
# usage: NEW=... OLD=... BENCH=... ab.sh [LINK...]   (progress in /tmp/hystart.progress)
cd "$(dirname "$0")/../../.."
O=docs/bench-results/hystart-2026-12-01
link() { # tag rtt rate loss w1mib reps workloads
  timeout 1800 $BENCH --no-build --n2p $NEW --n2p-alt $OLD --no-dumbpipe \
    --variants n2p,n2p-alt,socat --workloads $7 --sections wan --netem-reps $6 \
    --netem-w1-mib $5 --wan-rtt-ms $2 --wan-rate-mbit $3 --wan-loss $4 --wan-tcp-cc bbr \
    --wan-socat-cc bbr --out $O/$1 > /tmp/hystart-$1.log 2>&1
  echo "$1 rc=$? $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> /tmp/hystart.progress
}
date +%T >> /tmp/hystart.progress
for l in ${@:-wan0 far0 wan05 far2 lan0 loop fair}; do
  case $l in
    wan0) link wan-30ms-100mbit-0pct 30 100 0 64 5 W1,W2,P1 ;;
    far0) link far-120ms-20mbit-0pct 120 20 0 32 3 W1,W2,P1 ;;
    wan05) link wan-30ms-100mbit-0.5pct 30 100 0.5 64 3 W1,W2 ;;
    far2) link far-120ms-20mbit-2pct 120 20 2 32 3 W1,W2 ;;
    lan0) link lan-1ms-1gbit-0pct 1 1000 0 64 3 W1,W3 ;;
    loop)
      timeout 900 $BENCH --no-build --n2p $NEW --n2p-alt $OLD --no-dumbpipe \
        --variants direct,n2p,n2p-alt --workloads W1,W3 --sections transfers --reps 5 \
        --out $O/loopback > /tmp/hystart-loop.log 2>&1
      echo "loop rc=$? $(date +%T)" >> /tmp/hystart.progress ;;
    fair)
      for b in NEW OLD; do
        timeout 900 $BENCH fairness --n2p ${!b} --links 30/100,120/20 --n2p-cc tolerant \
          --tcp-cc cubic --reps 2 --out $O/fairness-$b > /tmp/hystart-fair-$b.log 2>&1
        echo "fair $b rc=$? $(date +%T)" >> /tmp/hystart.progress
      done ;;
  esac
done
echo done >> /tmp/hystart.progress
