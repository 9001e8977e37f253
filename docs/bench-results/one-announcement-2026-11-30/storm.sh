#!/bin/bash
# storm.sh ROUNDS: 8-node starts; after convergence + 4 s, per-node CPU over 3 s; keep dirs with a node over 10 %
BIN=${BIN:-/tmp/n2p-hb2}; N=${N:-8}
for r in $(seq 1 $1); do
  out=$(cd /tmp/my && BIN=$BIN SETTLE=16 LOG="${LOG-warn,n2p=info,n2p_core=info,n2p_mesh=info}" bash -c "
    ./start.sh $N > /tmp/s3/storm-start.txt 2>&1 &
    sp=\$!
    D=/dev/shm/sx-$N
    while ! grep -q -E 'converged|TIMEOUT' /tmp/s3/storm-start.txt; do sleep 0.1; done
    sleep 4
    a=\$(for p in \$(cat \$D/pids); do awk '{print \$14+\$15}' /proc/\$p/stat; done | tr '\n' ' ')
    sleep 3
    b=\$(for p in \$(cat \$D/pids); do awk '{print \$14+\$15}' /proc/\$p/stat; done | tr '\n' ' ')
    echo \"\$a|\$b\"
    if python3 -c \"import sys; a=list(map(int,'\$a'.split())); b=list(map(int,'\$b'.split())); sys.exit(0 if max(y-x for x,y in zip(a,b))>30 else 1)\"; then rm -rf /dev/shm/storm-keep; cp -r \$D /dev/shm/storm-keep; for i in \$(seq -w 0 $((N-1))); do N2P_HOME=\$D/h\$i timeout 3 $BIN status --json > /dev/shm/storm-keep/status\$i.json 2>&1; done; hot=\$(python3 -c \"a=list(map(int,'\$a'.split())); b=list(map(int,'\$b'.split())); print(max(range(len(a)), key=lambda i:b[i]-a[i]))\"); hp=\$(sed -n \$((hot+1))p \$D/pids); echo hot=\$hot pid=\$hp; perf record -F 999 --call-graph dwarf,16384 -p \$hp -o /tmp/s3/storm-perf.data -- sleep 3 >/dev/null 2>&1; ss -tuanp | grep -c \"pid=\$hp,\" ; echo STORM; fi
    kill \$sp; wait
  ")
  echo "round $r: $(grep converged /tmp/s3/storm-start.txt) $out"
  echo "$out" | grep -q STORM && break
done
