#!/bin/bash
# usage: ab.sh RTT RATE LOSS RUNS ROUNDS TAG bin1 bin2 ...
RTT=$1 RATE=$2 LOSS=$3 RUNS=$4 ROUNDS=$5 TAG=$6; shift 6
for r in $(seq 1 $ROUNDS); do
  for b in "$@"; do
    n=$(basename $b); o=/tmp/p1/$TAG/$n-$r; mkdir -p $o
    rm -rf /dev/shm/p1ab
    timeout 1200 /tmp/tgt-s/release/n2p-bench --no-build --n2p $b --no-dumbpipe --variants n2p,socat --workloads P1 --sections wan --netem-reps 1 --netem-w1-mib 2 --wan-rtt-ms $RTT --wan-rate-mbit $RATE --wan-loss $LOSS --narinfo-requests 5 --cold-lookups $RUNS --out $o > $o/log 2>&1
    echo "$n r$r: $(grep -o 'ms: [0-9.]* \[[^]]*\] over [0-9]* runs; [0-9]* not answered 200[^.]*' $o/results.md)" >> /tmp/p1/$TAG.txt
  done
done
echo done >> /tmp/p1/$TAG.txt
