#!/bin/bash
# usage: BIN=... rss.sh N -> starts N mesh nodes with ../mesh-join-2026-11-30/run.sh (HOLD=1,
# SETTLE=0), then prints median and max VmRSS / RssAnon (kB) of the nodes at the given
# seconds after convergence (AT, default "1 10 35 65"), then kills them.
N=$1; here=$(cd "$(dirname "$0")" && pwd)
HOLD=1 SETTLE=0 bash "$here/../mesh-join-2026-11-30/run.sh" "$N" 6 | head -1
D=/dev/shm/mx-$N-6; t0=$(date +%s)
stat() { sort -n | awk '{a[NR]=$1} END {printf "median %d max %d", a[int((NR+1)/2)], a[NR]}'; }
for at in ${AT:-1 10 35 65}; do
  while [ $(( $(date +%s) - t0 )) -lt $at ]; do sleep 0.2; done
  rss=$(for p in $(cat $D/pids); do awk '/VmRSS/{print $2}' /proc/$p/status; done | stat)
  anon=$(for p in $(cat $D/pids); do awk '/RssAnon/{print $2}' /proc/$p/status; done | stat)
  alive=$(for p in $(cat $D/pids); do kill -0 $p 2>/dev/null && echo; done | wc -l)
  echo "+${at}s: VmRSS $rss  RssAnon $anon  ($alive alive)"
done
kill -9 $(cat $D/pids) 2>/dev/null
