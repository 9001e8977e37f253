#!/bin/bash
# start.sh N: N nodes of $BIN on loopback; converged time, CPU per node to converge, UDP datagrams and bytes on lo during the start.
N=$1; BIN=${BIN:-/tmp/n2p-head}
D=/dev/shm/sx-$N; rm -rf $D; mkdir -p $D; cd $D
head -c16 /dev/urandom | xxd -p > team.secret; chmod 600 team.secret
printf '[mesh]\nsecret_file = "team.secret"\nrelay = "disabled"\n' > team.toml
port=$((20000 + RANDOM % 10000))
for i in $(seq -w 0 $((N-1))); do
  id=$(N2P_HOME=$D/h$i $BIN id 2>/dev/null)
  printf '\n[[member]]\nname = "n%s"\nid = "%s"\naddrs = ["127.0.0.1:%s"]\n' $i $id $((port+10#$i)) >> team.toml
done
trap 'kill -9 $(cat $D/pids) 2>/dev/null; nft delete table inet n2pcount 2>/dev/null' EXIT
nft add table inet n2pcount; nft add chain inet n2pcount out '{ type filter hook output priority 0; }'; nft add rule inet n2pcount out oifname lo udp dport $port-$((port+N)) counter
nft add rule inet n2pcount out oifname lo udp dport $port-$((port+N)) @th,64,8 \& 0xf0 == 0xc0 counter
nft add rule inet n2pcount out oifname lo udp dport $port-$((port+N)) @th,64,8 \& 0x80 == 0x80 counter
LOGS=${LOG-warn,n2p=info,n2p_core=info,n2p_mesh=info}
start=$(date +%s.%N)
for i in $(seq -w 0 $((N-1))); do
  N2P_HOME=$D/h$i NO_COLOR=1 RUST_LOG=$LOGS $BIN --relay disabled --bind 127.0.0.1:$((port+10#$i)) mesh join bench --team team.toml --share --daemon-socket $D/dummy.sock > $D/n$i.log 2>&1 &
  echo $! >> pids; disown
done
while true; do
  ok=1
  for i in $(seq -w 0 $((N-1))); do c=$(ls $D/h$i/peers 2>/dev/null | grep -c sock); [ "$c" -eq $((N-1)) ] || { ok=0; break; }; done
  [ $ok = 1 ] && break
  now=$(date +%s.%N); if (( $(echo "$now - $start > 200" | bc) )); then echo TIMEOUT; exit 1; fi
  sleep 0.1
done
echo "converged $(echo "$(date +%s.%N)-$start"|bc)"
for p in $(cat pids); do awk '{print $14+$15}' /proc/$p/stat; done | awk -v hz=$(getconf CLK_TCK) '{s+=$1} END {printf "CPU per node to converge: %.0f ms\n", s/NR/hz*1000}'
nft list table inet n2pcount | grep -o 'packets [0-9]* bytes [0-9]*' | awk 'NR==1{printf "udp on lo: %d datagrams, %.1f MB", $2, $4/1e6} NR==2{printf "; initial %d", $2} NR==3{printf "; long header %d (%.1f MB)\n", $2, $4/1e6}'
sleep ${SETTLE:-0}
