#!/bin/bash
# interleaved crash rounds of /tmp/n2p-<build> for each build of $BUILDS (default: base fix);
# keeps each round's gone.txt and logs of slow nodes
for r in $(seq 1 $1); do
  for b in ${BUILDS:-base fix}; do
    BIN=/tmp/n2p-$b VICTIM=${VICTIM:-07} SETTLE=${SETTLE:-20} timeout 400 ./crash.sh 100 > /tmp/mx/crash-$b-$TAG$r.out 2>&1
    echo "$b r$r: $(grep -h 'converged\|neighbours:\|idle CPU\|RSS per node\|first:\|later than\|TIMEOUT' /tmp/mx/crash-$b-$TAG$r.out | tr '\n' ' ')"
    mkdir -p /tmp/mx/logs-$b-$TAG$r; cp /dev/shm/cx-100/*.txt /dev/shm/cx-100/team.toml /tmp/mx/logs-$b-$TAG$r/ 2>/dev/null
    grep -q "later than 15 s: 0" /tmp/mx/crash-$b-$TAG$r.out || cp /dev/shm/cx-100/n*.log /tmp/mx/logs-$b-$TAG$r/
    grep -h "unreachable\|overruled\|newer news\|went silent\|routine check" /dev/shm/cx-100/n*.log > /tmp/mx/logs-$b-$TAG$r/events.log
    sleep 3
  done
done
