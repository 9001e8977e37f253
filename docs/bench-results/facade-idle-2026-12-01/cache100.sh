#!/bin/bash
# cache100.sh TAG: 100 mesh nodes of $BIN on loopback, each serving a binary-cache facade.
# Once every node has a socket for each of the 99 others, it sends one narinfo GET to the
# facades of the first ASK nodes (default 10; each asks all 99 peers). SETTLE s after that,
# it measures every node's CPU over 10 s and reads its VmRSS/RssAnon.
# LOG sets the nodes' RUST_LOG (default warn). QUOTA, if set, holds all nodes together to
# that % of one core (a cgroup v1 CPU quota) from just before the requests to the end.
# Writes $OUT/TAG.nodes: one line per node, "cpu_ticks_in_10s VmRSS_kB RssAnon_kB Threads",
# the asking nodes first; and $OUT/TAG.load: every 10 s after the asks, the machine's busy
# CPU (% of one core) and the number of peer sockets of all nodes (100 x 99 when converged).
N=100; BIN=${BIN:-/tmp/n2p-head}; OUT=${OUT:-/tmp/facade-idle}; ASK=${ASK:-10}; SETTLE=${SETTLE:-170}
mkdir -p $OUT
D=/dev/shm/fx-$N; rm -rf $D; mkdir -p $D; cd $D
head -c16 /dev/urandom | xxd -p > team.secret; chmod 600 team.secret
printf '[mesh]\nsecret_file = "team.secret"\nrelay = "disabled"\n' > team.toml
port=$((20000 + RANDOM % 10000)); cport=$((port + 200))
for i in $(seq -w 0 $((N-1))); do
  id=$(N2P_HOME=$D/h$i $BIN id 2>/dev/null)
  printf '\n[[member]]\nname = "n%s"\nid = "%s"\naddrs = ["127.0.0.1:%s"]\n' $i $id $((port+10#$i)) >> team.toml
done
CG=/sys/fs/cgroup/cpu/n2p-cache100-$$
trap 'kill -9 $(cat $D/pids) 2>/dev/null; [ -d $CG ] && { sleep 1; rmdir $CG; }' EXIT
start=$(date +%s.%N)
for i in $(seq -w 0 $((N-1))); do
  N2P_HOME=$D/h$i NO_COLOR=1 RUST_LOG=${LOG:-warn} $BIN --relay disabled --bind 127.0.0.1:$((port+10#$i)) \
    mesh join bench --team team.toml --share --daemon-socket $D/dummy.sock \
    --cache 127.0.0.1:$((cport+10#$i)) > $D/n$i.log 2>&1 &
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
if [ -n "$QUOTA" ]; then
  mkdir $CG || exit 1
  for q in $(cat $D/pids); do echo $q > $CG/cgroup.procs; done
  echo $((QUOTA * 1000)) > $CG/cpu.cfs_quota_us
  echo "held to $QUOTA % of one core"
fi
if [ "$ASK" -gt 0 ]; then
  t0=$(date +%s.%N)
  for i in $(seq -w 0 $((ASK-1))); do
    curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:$((cport+10#$i))/00000000000000000000000000000000.narinfo &
  done > $D/codes; wait
  echo "asked: $(sort $D/codes | uniq -c | tr '\n' ' ') in $(echo "$(date +%s.%N)-$t0"|bc) s"
fi
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
( b0=$(busy); t=0; while true; do sleep 10; t=$((t+10)); b1=$(busy)
  echo "$t s: busy $(( (b1 - b0) / 10 )) % sockets $(ls $D/h*/peers | grep -c sock)"; b0=$b1; done ) > $OUT/$1.load &
mon=$!
sleep $SETTLE
kill $mon
ticks() { for q in $(cat $D/pids); do awk '{print $14+$15}' /proc/$q/stat; done; }
ticks > $D/t0; sleep 10; ticks > $D/t1
i=0; for q in $(cat $D/pids); do i=$((i+1))
  echo "$(( $(sed -n ${i}p $D/t1) - $(sed -n ${i}p $D/t0) )) $(awk '/^VmRSS/{r=$2} /^RssAnon/{a=$2} /^Threads/{t=$2} END{print r, a, t}' /proc/$q/status)"
done > $OUT/$1.nodes
hz=$(getconf CLK_TCK)
summary() {
cat > $D/part
sort -n $D/part | awk -v hz=$hz '{c[NR]=$1} END {printf "idle CPU %% of a core: median %.2f max %.2f\n", c[int(NR/2)]/hz/10*100, c[NR]/hz/10*100}'
sort -n -k2 $D/part | awk '{r[NR]=$2} END {printf "RSS MB median %.1f max %.1f\n", r[int(NR/2)]/1024, r[NR]/1024}'
sort -n -k3 $D/part | awk '{a[NR]=$3} END {printf "anon MB median %.1f max %.1f\n", a[int(NR/2)]/1024, a[NR]/1024}'
}
[ "$ASK" -gt 0 ] && { echo "-- the $ASK asking nodes"; head -n $ASK $OUT/$1.nodes | summary; }
echo "-- the $((N-ASK)) others"; tail -n +$((ASK+1)) $OUT/$1.nodes | summary
