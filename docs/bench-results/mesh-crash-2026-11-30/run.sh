#!/bin/bash
# usage: run2.sh N EXPIRY  -> spawns N nodes (STAGGER ms apart), waits for convergence,
# reports CPU spent to converge, anon/file RSS after SETTLE s, then SIGTERM.
N=$1; EXP=$2; BIN=${BIN:-/work/main/target/release/n2p}; STAGGER=${STAGGER:-0}
D=/dev/shm/mx-$N-$EXP; rm -rf $D; mkdir -p $D; cd $D
head -c16 /dev/urandom | xxd -p > team.secret; chmod 600 team.secret
printf '[mesh]\nexpiry_secs = %s\nsecret_file = "team.secret"\nrelay = "disabled"\n' $EXP > team.toml
port=$((20000 + RANDOM % 20000))
for i in $(seq -w 0 $((N-1))); do
  id=$(N2P_HOME=$D/h$i $BIN id 2>/dev/null)
  printf '\n[[member]]\nname = "n%s"\nid = "%s"\naddrs = ["127.0.0.1:%s"]\n' $i $id $((port+10#$i)) >> team.toml
done
trap '[ -n "$HOLD" ] || kill -9 $(cat $D/pids) 2>/dev/null' EXIT
start=$(date +%s.%N)
for i in $(seq -w 0 $((N-1))); do
  N2P_HOME=$D/h$i NO_COLOR=1 RUST_LOG=${LOG:-info} $BIN --relay disabled --bind 127.0.0.1:$((port+10#$i)) mesh join bench --team team.toml --share --daemon-socket $D/dummy.sock > $D/n$i.log 2>&1 &
  echo $! >> pids
  [ $STAGGER = 0 ] || sleep $(echo "scale=3; $STAGGER/1000" | bc)
done
spawned=$(date +%s.%N)
while true; do
  ok=1
  for i in $(seq -w 0 $((N-1))); do c=$(ls $D/h$i/peers 2>/dev/null | grep -c sock); [ "$c" -eq $((N-1)) ] || { ok=0; break; }; done
  [ $ok = 1 ] && break
  now=$(date +%s.%N); if (( $(echo "$now - $start > 200" | bc) )); then echo TIMEOUT; break; fi
  sleep 0.1
done
conv=$(date +%s.%N)
tot=0; for p in $(cat pids); do t=$(awk '{print $14+$15}' /proc/$p/stat); tot=$((tot+t)); done
echo "spawn $(echo "$spawned-$start"|bc) converged $(echo "$conv-$start"|bc)  cpu to converge: total $(echo "scale=2; $tot/100"|bc) s, per node $(echo "scale=1; $tot*10/$N"|bc) ms"
sleep ${SETTLE:-30}
tot0=0; for p in $(cat pids); do t=$(awk '{print $14+$15}' /proc/$p/stat); tot0=$((tot0+t)); done
sleep 10
tot1=0; rss=0; anon=0; for p in $(cat pids); do t=$(awk '{print $14+$15}' /proc/$p/stat); tot1=$((tot1+t)); r=$(awk '/VmRSS/{print $2}' /proc/$p/status); a=$(awk '/RssAnon/{print $2}' /proc/$p/status); rss=$((rss+r)); anon=$((anon+a)); done
echo "idle cpu per node % = $(echo "scale=3; ($tot1-$tot0)/$N/10" | bc)  rss avg kB = $((rss/N)) anon avg kB = $((anon/N))"
echo "unreachable lines: $(cat $D/n*.log | grep -c 'is unreachable (its conn\|is unreachable (lost')  reported-by lines: $(cat $D/n*.log | grep -c 'is unreachable (reported')"
[ -n "$HOLD" ] && { echo "holding; pids in $D/pids"; exit 0; }
t0=$(date +%s.%N); kill $(cat pids)
for k in $(seq 600); do left=0; for p in $(cat pids); do kill -0 $p 2>/dev/null && left=$((left+1)); done; [ $left = 0 ] && break; sleep 0.1; done
echo "after SIGTERM: $left left after $(echo "$(date +%s.%N)-$t0"|bc) s"; [ $left = 0 ] || kill -9 $(cat pids) 2>/dev/null
