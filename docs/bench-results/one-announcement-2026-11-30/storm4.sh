#!/bin/bash
# storm4.sh TAG ROUNDS: 8-node starts in /dev/shm/st-TAG; per round: converged?, CPU ticks 4-7 s after, refusals in logs
TAG=$1; R=$2; BIN=${BIN:-/tmp/n2p-thr}; N=8
for r in $(seq 1 $R); do
D=/dev/shm/st-$TAG; rm -rf $D; mkdir -p $D; cd $D
head -c16 /dev/urandom | xxd -p > team.secret; chmod 600 team.secret
printf '[mesh]\nsecret_file = "team.secret"\nrelay = "disabled"\n' > team.toml
port=$((20000 + RANDOM % 30000))
for i in $(seq 0 $((N-1))); do
  id=$(N2P_HOME=$D/h$i $BIN id 2>/dev/null)
  printf '\n[[member]]\nname = "n%s"\nid = "%s"\naddrs = ["127.0.0.1:%s"]\n' $i $id $((port+i)) >> team.toml
done
pids=""
for i in $(seq 0 $((N-1))); do
  N2P_HOME=$D/h$i NO_COLOR=1 RUST_LOG=warn,n2p=info $BIN --relay disabled --bind 127.0.0.1:$((port+i)) mesh join bench --team team.toml --share --daemon-socket $D/dummy.sock > $D/n$i.log 2>&1 &
  pids="$pids $!"
done
t=0; while [ $t -lt 100 ]; do ok=1; for i in $(seq 0 $((N-1))); do c=$(ls $D/h$i/peers 2>/dev/null | grep -c sock); [ "$c" -eq $((N-1)) ] || { ok=0; break; }; done; [ $ok = 1 ] && break; sleep 0.1; t=$((t+1)); done
sleep 4
a=$(for p in $pids; do awk '{print $14+$15}' /proc/$p/stat; done | tr '\n' ' ')
sleep 3
b=$(for p in $pids; do awk '{print $14+$15}' /proc/$p/stat; done | tr '\n' ' ')
ref=$(cat $D/n*.log | grep -c "refusing more")
mx=$(python3 -c "a=list(map(int,'$a'.split())); b=list(map(int,'$b'.split())); print(max(y-x for x,y in zip(a,b)))")
echo "$TAG round $r: ok=$ok maxticks3s=$mx refusals=$ref"
if [ "$ref" -gt 0 ] || [ "$mx" -gt 30 ]; then cp -r $D /dev/shm/keep-$TAG-$r; fi
kill $pids; wait 2>/dev/null
done
