#!/bin/bash
# usage: REAL=/path/n2p TRACE="h05 h37 h71" heap.sh N AT
# Starts N mesh nodes (those in TRACE under heaptrack), waits AT s after convergence, then
# lists every node's RssAnon (kB, sorted) and, for the traced ones, the live heap at that
# moment by call site (heaptrack: what was not freed when the node was killed).
N=$1; AT=$2; here=$(cd "$(dirname "$0")" && pwd)
rm -f /dev/shm/ht-*
BIN=$here/wrap.sh HOLD=1 SETTLE=0 bash "$here/../mesh-join-2026-11-30/run.sh" "$N" 6 | head -1
D=/dev/shm/mx-$N-6
sleep "$AT"
for p in $(cat $D/pids); do
  for q in $p $(pgrep -P $p); do
    exe=$(readlink /proc/$q/exe 2>/dev/null); [ "$exe" = "$(readlink -f $REAL)" ] || continue
    h=$(tr '\0' '\n' < /proc/$q/environ | sed -n 's|^N2P_HOME=.*/||p')
    echo "$(awk '/RssAnon/{print $2}' /proc/$q/status) $(awk '/VmRSS/{print $2}' /proc/$q/status) $h $q"
  done
done | sort -n > $D/anon.txt
echo "RssAnon kB, VmRSS kB, node: lowest 3, median, highest 3"
head -3 $D/anon.txt; sed -n "$(( (N+1)/2 ))p" $D/anon.txt; tail -3 $D/anon.txt
for t in $TRACE; do grep " $t " $D/anon.txt | sed 's/^/traced: /'; done
# Only the n2p processes: heaptrack's own finish writing their files.
kill -9 $(awk '{print $4}' $D/anon.txt) 2>/dev/null
for t in $TRACE; do
  while pgrep -f "heaptrack -o /dev/shm/ht-$t " > /dev/null; do sleep 0.5; done
  f=$(ls /dev/shm/ht-$t.* 2>/dev/null | head -1); [ -n "$f" ] || continue
  echo "== $t: live at the kill (heaptrack_print --print-leaks)"
  heaptrack_print -f "$f" --print-leaks 1 --print-peaks 0 --print-allocators 0 --print-temporary 0 --print-histogram 0 --print-massif 0 2>/dev/null | head -${LINES_PER:-120}
done
