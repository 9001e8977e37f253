#!/bin/bash
# rounds.sh BUILD R: R crash rounds of /tmp/n2p-BUILD; keeps all logs of rounds with a node later than 15 s
b=$1
for r in $(seq 1 $2); do
  VICTIM=${VICTIM:-99} SETTLE=${SETTLE:-11} BIN=/tmp/n2p-$b timeout 400 ./crash.sh 100 > /tmp/mx/crash-$b-$TAG$r.out 2>&1
  echo "$b r$r: $(grep -h 'converged\|first:\|later than\|TIMEOUT' /tmp/mx/crash-$b-$TAG$r.out | tr '\n' ' ')"
  mkdir -p /tmp/mx/logs-$b-$TAG$r; cp /dev/shm/cx-100/*.txt /dev/shm/cx-100/team.toml /tmp/mx/logs-$b-$TAG$r/ 2>/dev/null
  grep -q "later than 15 s: 0" /tmp/mx/crash-$b-$TAG$r.out || cp /dev/shm/cx-100/n*.log /tmp/mx/logs-$b-$TAG$r/
  grep -h "unreachable\|newer news\|went silent" /dev/shm/cx-100/n*.log > /tmp/mx/logs-$b-$TAG$r/events.log
  sleep 3
done
