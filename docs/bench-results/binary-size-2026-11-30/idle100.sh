#!/bin/bash
# idle100.sh: start.sh 100, then wait SETTLE s and dump smaps of node 50 and the RSS summary
SETTLE=${SETTLE:-45} ./start.sh 100 > /tmp/my/idle100-$TAG.out 2>&1 &
sp=$!
D=/dev/shm/sx-100
while ! grep -q converged /tmp/my/idle100-$TAG.out 2>/dev/null; do sleep 1; grep -q TIMEOUT /tmp/my/idle100-$TAG.out && exit 1; done
sleep $((${SETTLE:-45} - 5))
p=$(sed -n 51p $D/pids)
cat /proc/$p/smaps > /tmp/my/smaps-$TAG.txt
cat /proc/$p/status | grep -E "VmRSS|RssAnon|RssFile|Threads" > /tmp/my/status-$TAG.txt
for q in $(cat $D/pids); do echo "$(awk '/^VmRSS/{r=$2} /^RssAnon/{a=$2} /^RssFile/{f=$2} END{print r, a, f}' /proc/$q/status) $(awk '/^Pss:/{print $2}' /proc/$q/smaps_rollup)"; done | awk '{r+=$1; a+=$2; f+=$3; p+=$4} END {printf "RSS avg %.1f MB anon %.1f file %.1f PSS %.1f\n", r/NR/1024, a/NR/1024, f/NR/1024, p/NR/1024}'
wait $sp
