#!/bin/bash
# starve.sh TAG: 100 mesh nodes of $BIN on loopback (no facade). 20 s after every node has a
# socket for each of the 99 others, all of them are held to $QUOTA % of one core in all
# (a cgroup v1 CPU quota; default 5) for $HOLD s (default 30), then let go, and watched
# for $AFTER s more (default 120).
# Writes $OUT/TAG.load: every 5 s from the hold, the machine's busy CPU (% of one core) and
# the peer sockets of all nodes (100 x 99 when converged); and $OUT/TAG-reports.txt, the
# nodes' membership log lines per 10 s (count.sh). Logs at LOG (default
# warn,n2p=info,n2p_mesh=info).
N=100; BIN=${BIN:-/tmp/n2p-head}; OUT=${OUT:-/tmp/starve}; QUOTA=${QUOTA:-5}; HOLD=${HOLD:-30}; AFTER=${AFTER:-120}
HERE=$(cd $(dirname $0) && pwd)
mkdir -p $OUT
D=/dev/shm/st-$N; rm -rf $D; mkdir -p $D; cd $D
CG=/sys/fs/cgroup/cpu/n2p-starve-$$; mkdir $CG || exit 1
head -c16 /dev/urandom | xxd -p > team.secret; chmod 600 team.secret
printf '[mesh]\nsecret_file = "team.secret"\nrelay = "disabled"\n' > team.toml
port=$((20000 + RANDOM % 10000))
for i in $(seq -w 0 $((N-1))); do
  id=$(N2P_HOME=$D/h$i $BIN id 2>/dev/null)
  printf '\n[[member]]\nname = "n%s"\nid = "%s"\naddrs = ["127.0.0.1:%s"]\n' $i $id $((port+10#$i)) >> team.toml
done
trap 'kill -9 $(cat $D/pids) 2>/dev/null; sleep 1; rmdir $CG' EXIT
start=$(date +%s.%N)
for i in $(seq -w 0 $((N-1))); do
  N2P_HOME=$D/h$i NO_COLOR=1 RUST_LOG=${LOG:-warn,n2p=info,n2p_mesh=info} $BIN --relay disabled --bind 127.0.0.1:$((port+10#$i)) \
    mesh join bench --team team.toml --share --daemon-socket $D/dummy.sock --no-cache > $D/n$i.log 2>&1 &
  echo $! >> pids; disown
done
while true; do
  ok=1
  for i in $(seq -w 0 $((N-1))); do c=$(ls $D/h$i/peers 2>/dev/null | grep -c sock); [ "$c" -eq $((N-1)) ] || { ok=0; break; }; done
  [ $ok = 1 ] && break
  if (( $(echo "$(date +%s.%N) - $start > 200" | bc) )); then echo TIMEOUT; exit 1; fi
  sleep 0.1
done
echo "converged $(echo "$(date +%s.%N)-$start"|bc)"
sleep 20
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
( b0=$(busy); t=0; while true; do sleep 5; t=$((t+5)); b1=$(busy)
  echo "$t s: busy $(( (b1 - b0) / 5 )) % sockets $(ls $D/h*/peers | grep -c sock)"; b0=$b1; done ) > $OUT/$1.load &
mon=$!
for q in $(cat pids); do echo $q > $CG/cgroup.procs; done
echo $((QUOTA * 1000)) > $CG/cpu.cfs_quota_us
echo "held to $QUOTA % at $(date -u +%T)"
sleep $HOLD
echo -1 > $CG/cpu.cfs_quota_us
echo "let go at $(date -u +%T)"
sleep $AFTER
kill $mon
$HERE/count.sh $D > $OUT/$1-reports.txt
