#!/bin/bash
# rss100.sh TAG: start.sh 100 with $BIN (env passes through), wait SETTLE s, RSS per node: median/p90/max, threads
mkdir -p /tmp/my
START="$(dirname "$(readlink -f "$0")")/../binary-size-2026-11-30/start.sh"
SETTLE=${SETTLE:-75} "$START" 100 > /tmp/my/rss-$1.out 2>&1 &
sp=$!
D=/dev/shm/sx-100
while ! grep -q converged /tmp/my/rss-$1.out 2>/dev/null; do sleep 1; grep -q TIMEOUT /tmp/my/rss-$1.out && exit 1; done
sleep $((${SETTLE:-75} - 5))
for q in $(cat $D/pids); do awk '/^VmRSS/{r=$2} /^RssAnon/{a=$2} /^Threads/{t=$2} END{print r, a, t}' /proc/$q/status; done > /tmp/my/rss-$1.nodes
sort -n /tmp/my/rss-$1.nodes | awk '{r[NR]=$1; a[NR]=$2; t+=$3} END {printf "RSS MB median %.1f p90 %.1f max %.1f; threads avg %.1f\n", r[int(NR/2)]/1024, r[int(NR*0.9)]/1024, r[NR]/1024, t/NR}'
echo "nodes above 16 MB: $(awk '$1>16384' /tmp/my/rss-$1.nodes | wc -l)"
sort -n -k2 /tmp/my/rss-$1.nodes | awk '{a[NR]=$2} END {printf "anon MB median %.1f max %.1f\n", a[int(NR/2)]/1024, a[NR]/1024}'
wait $sp
