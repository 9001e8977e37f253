#!/bin/bash
# usage: crash.sh N  -> spawns N nodes, waits for convergence, SETTLE s, SIGKILLs node VICTIM,
# prints per-node time until its socket is gone. Logs kept in $D.
N=$1; BIN=${BIN:-/work/main/target/release/n2p}; V=${VICTIM:-07}
D=/dev/shm/cx-$N; rm -rf $D; mkdir -p $D; cd $D
head -c16 /dev/urandom | xxd -p > team.secret; chmod 600 team.secret
printf '[mesh]\nsecret_file = "team.secret"\nrelay = "disabled"\n' > team.toml
port=$((20000 + RANDOM % 10000))
for i in $(seq -w 0 $((N-1))); do
  id=$(N2P_HOME=$D/h$i $BIN id 2>/dev/null)
  printf '\n[[member]]\nname = "n%s"\nid = "%s"\naddrs = ["127.0.0.1:%s"]\n' $i $id $((port+10#$i)) >> team.toml
done
trap 'kill -9 $(cat $D/pids) 2>/dev/null' EXIT
start=$(date +%s.%N)
for i in $(seq -w 0 $((N-1))); do
  N2P_HOME=$D/h$i NO_COLOR=1 RUST_LOG=${LOG:-info} $BIN --relay disabled --bind 127.0.0.1:$((port+10#$i)) mesh join bench --team team.toml --share --daemon-socket $D/dummy.sock > $D/n$i.log 2>&1 &
  echo $! >> pids
done
while true; do
  ok=1
  for i in $(seq -w 0 $((N-1))); do c=$(ls $D/h$i/peers 2>/dev/null | grep -c sock); [ "$c" -eq $((N-1)) ] || { ok=0; break; }; done
  [ $ok = 1 ] && break
  now=$(date +%s.%N); if (( $(echo "$now - $start > 200" | bc) )); then echo TIMEOUT; exit 1; fi
  sleep 0.1
done
echo "converged $(echo "$(date +%s.%N)-$start"|bc)"
sleep ${SETTLE:-20}
vp=$(sed -n "$((10#$V+1))p" pids); t0=$(date +%s.%N); echo "killing n$V pid $vp at $(date +%T.%N)"; kill -9 $vp
declare -A gone
while true; do
  left=0
  for i in $(seq -w 0 $((N-1))); do
    [ $i = $V ] && continue; [ -n "${gone[$i]}" ] && continue
    if [ -e $D/h$i/peers/n$V.sock ]; then left=$((left+1)); else gone[$i]=$(echo "$(date +%s.%N)-$t0"|bc); fi
  done
  [ $left = 0 ] && break
  if (( $(echo "$(date +%s.%N) - $t0 > 120" | bc) )); then echo "TIMEOUT: $left left"; break; fi
  sleep 0.1
done
for i in "${!gone[@]}"; do echo "n$i ${gone[$i]}"; done | sort -k2 -n > $D/gone.txt
echo "first: $(head -1 $D/gone.txt)  last: $(tail -1 $D/gone.txt)"
awk '{print $2}' $D/gone.txt | awk '$1>15' | wc -l | xargs echo "nodes later than 15 s:"
