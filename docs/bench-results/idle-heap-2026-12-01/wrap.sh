#!/bin/bash
# BIN for ../mesh-join-2026-11-30/run.sh: runs the nodes named in $TRACE (e.g. "h05 h37")
# under heaptrack, the rest as they are. REAL is the n2p binary.
for t in $TRACE; do
  if [ "$(basename "$N2P_HOME")" = "$t" ] && [ "$3" != id ] && [ "$1" != id ]; then
    exec heaptrack -o /dev/shm/ht-$t "$REAL" "$@"
  fi
done
exec "$REAL" "$@"
