#!/bin/bash
# idle.sh BIN: a 100-node start (start.sh), then each node's CPU over 60 s from 30 s after
# convergence (% of a core: median / p90 / max) and VmRSS / RssAnon at 30 s and 90 s.
START=/work/main/docs/bench-results/binary-size-2026-11-30/start.sh
out=/tmp/abl/idle-$(basename $1).out
BIN=$1 SETTLE=100 timeout 400 bash $START 100 > $out 2>&1 &
while ! grep -q "udp on lo" $out 2>/dev/null; do sleep 0.5; grep -q TIMEOUT $out && exit 1; done
D=/dev/shm/sx-100; hz=$(getconf CLK_TCK)
cpu() { for p in $(cat $D/pids); do awk '{print $14+$15}' /proc/$p/stat; done; }
mem() { for p in $(cat $D/pids); do awk '/^VmRSS/{r=$2} /^RssAnon/{a=$2} END{print r, a}' /proc/$p/status; done | sort -n | awk '{r[NR]=$1; a[NR]=$2} END {printf "RSS median %.1f max %.1f MB", r[int((NR+1)/2)]/1024, r[NR]/1024}'; }
sleep 30; c0=$(cpu); m30=$(mem); sleep 60; c1=$(cpu); m90=$(mem)
head -3 $out | tr '\n' ' '; echo
echo "RSS at +30 s: $m30; at +90 s: $m90"
paste <(echo "$c0") <(echo "$c1") | awk -v hz=$hz '{print ($2-$1)/hz/60*100}' | sort -n | awk '{a[NR]=$1} END {printf "idle CPU %% of a core over 60 s: median %.2f p90 %.2f max %.2f\n", a[int((NR+1)/2)], a[int(NR*0.9)], a[NR]}'
wait
