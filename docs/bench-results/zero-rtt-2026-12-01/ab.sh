#!/bin/bash
# usage: ab.sh RTT RATE LOSS RUNS ROUNDS TAG bin1 bin2 ...
# Per binary and round: the pull section on the emulated link (P1, P2), then RUNS fresh
# facades, each timed to its first lookup and, after an idle close of its store connection,
# to a second lookup on the reconnection. Reports under $OUT/$TAG (default /tmp/zrtt).
RTT=$1 RATE=$2 LOSS=$3 RUNS=$4 ROUNDS=$5 TAG=$6; shift 6
OUT=${OUT:-/tmp/zrtt}; BENCH=${BENCH:-/tmp/tgt-s/release/n2p-bench}
for r in $(seq 1 $ROUNDS); do
  for b in "$@"; do
    n=$(basename $b); o=$OUT/$TAG/$n-$r; mkdir -p $o
    timeout 1200 $BENCH --no-build --n2p $b --no-dumbpipe --variants n2p,socat --workloads P1,P2 --sections wan --netem-reps 1 --netem-w1-mib 2 --wan-rtt-ms $RTT --wan-rate-mbit $RATE --wan-loss $LOSS --narinfo-requests 5 --cold-lookups $RUNS --out $o > $o/log 2>&1
    echo "$n r$r: first $(grep -o 'just started[^:]*: [0-9.]* \[[^]]*\] over [0-9]* runs; [0-9]* not answered 200' $o/results.md | sed 's/.*ms: //')  | reconnect $(grep -o 'resumed), ms: [0-9.]* \[[^]]*\] over [0-9]* runs; [0-9]* not answered 200' $o/results.md | sed 's/.*ms: //')" >> $OUT/$TAG.txt
  done
done
echo done >> $OUT/$TAG.txt
