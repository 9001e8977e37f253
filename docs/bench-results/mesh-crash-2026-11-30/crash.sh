#!/bin/bash
# usage: crash.sh N  -> spawns N nodes, waits for convergence, SETTLE s, SIGKILLs node VICTIM,
# prints per-node time until its socket is gone. Logs kept in $D.
# IDLE_SPAN=S: before the kill, the CPU each node spends over S s (percent of a core) and
#   its RSS; KILL=none then stops there.
# KILL=neighbours: kill the victim together with its gossip neighbours of the moment (read
#   from its debug log), so that no live node has it as a neighbour.
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
LOGS=${LOG:-info}; [ "$KILL" = neighbours ] && LOGS=${LOG:-info,n2p_mesh::node::actor=debug}
start=$(date +%s.%N)
for i in $(seq -w 0 $((N-1))); do
  N2P_HOME=$D/h$i NO_COLOR=1 RUST_LOG=$LOGS $BIN --relay disabled --bind 127.0.0.1:$((port+10#$i)) mesh join bench --team team.toml --share --daemon-socket $D/dummy.sock > $D/n$i.log 2>&1 &
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
if [ -n "$IDLE_SPAN" ]; then
  ticks() { for p in $(cat pids); do awk '{print $14+$15}' /proc/$p/stat; done; }
  ticks > t0; sleep $IDLE_SPAN; ticks > t1
  paste t0 t1 | awk -v hz=$(getconf CLK_TCK) -v span=$IDLE_SPAN '{d=($2-$1)/hz/span*100; s+=d; if(d>m)m=d} END {printf "idle CPU per node: avg %.2f %% max %.2f %%\n", s/NR, m}'
  for p in $(cat pids); do awk '/^VmRSS/{r=$2} /^RssAnon/{a=$2} END{print r, a}' /proc/$p/status; done | awk '{r+=$1; a+=$2} END {printf "RSS per node: avg %.1f MB, anonymous %.1f MB\n", r/NR/1024, a/NR/1024}'
  [ "$KILL" = none ] && exit 0
fi
kill_list="$((10#$V))"
if [ "$KILL" = neighbours ]; then
  # The victim's neighbours now: its "gossip neighbor up/down" lines, replayed.
  declare -A nb
  while read -r dir id; do if [ "$dir" = up ]; then nb[$id]=1; else unset "nb[$id]"; fi; done < <(grep -o 'gossip neighbor [a-z]* peer=[0-9a-f]*' n$V.log | sed -E 's/gossip neighbor (up|down) peer=([0-9a-f]+)/\1 \2/')
  for short in "${!nb[@]}"; do
    for i in $(seq -w 0 $((N-1))); do
      full=$(grep -A1 "name = \"n$i\"" team.toml | grep -o '"[0-9a-f]*"' | tr -d '"')
      [[ "$full" == $short* ]] && kill_list="$kill_list $((10#$i))"
    done
  done
  echo "victim n$V neighbours: ${!nb[*]} -> killing nodes $kill_list"
fi
t0=$(date +%s.%N); echo "killing n$V at $(date +%T.%N)"
for k in $kill_list; do kill -9 $(sed -n "$((k+1))p" pids); done
dead=" $kill_list "
declare -A gone
while true; do
  left=0
  for i in $(seq -w 0 $((N-1))); do
    [[ "$dead" == *" $((10#$i)) "* ]] && continue; [ -n "${gone[$i]}" ] && continue
    if [ -e $D/h$i/peers/n$V.sock ]; then left=$((left+1)); else gone[$i]=$(echo "$(date +%s.%N)-$t0"|bc); fi
  done
  [ $left = 0 ] && break
  if (( $(echo "$(date +%s.%N) - $t0 > 120" | bc) )); then echo "TIMEOUT: $left left"; break; fi
  sleep 0.1
done
for i in "${!gone[@]}"; do echo "n$i ${gone[$i]}"; done | sort -k2 -n > $D/gone.txt
echo "first: $(head -1 $D/gone.txt)  last: $(tail -1 $D/gone.txt)"
awk '{print $2}' $D/gone.txt | awk '$1>15' | wc -l | xargs echo "nodes later than 15 s:"
