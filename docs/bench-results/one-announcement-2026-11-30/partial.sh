#!/bin/bash
# partial.sh: a team listing 100 members, 3 of them started; SIGKILL one; time until the other two drop its socket
BIN=${BIN:-/tmp/n2p-q500}; N=100; L=3
D=/dev/shm/partial; rm -rf $D; mkdir -p $D; cd $D
head -c16 /dev/urandom | xxd -p > team.secret; chmod 600 team.secret
printf '[mesh]\nsecret_file = "team.secret"\nrelay = "disabled"\n' > team.toml
port=$((20000 + RANDOM % 30000))
for i in $(seq 0 $((N-1))); do
  id=$(N2P_HOME=$D/h$i $BIN id 2>/dev/null)
  printf '\n[[member]]\nname = "n%s"\nid = "%s"\naddrs = ["127.0.0.1:%s"]\n' $i $id $((port+i)) >> team.toml
done
pids=()
for i in $(seq 0 $((L-1))); do
  N2P_HOME=$D/h$i NO_COLOR=1 RUST_LOG=warn,n2p=info $BIN --relay disabled --bind 127.0.0.1:$((port+i)) mesh join bench --team team.toml --share --daemon-socket $D/dummy.sock > $D/n$i.log 2>&1 &
  pids+=($!)
done
t0=$(date +%s.%N)
while true; do c0=$(ls $D/h0/peers | grep -c sock); c1=$(ls $D/h1/peers | grep -c sock); [ $c0 -eq 2 ] && [ $c1 -eq 2 ] && break; sleep 0.05; done
echo "converged $(echo "$(date +%s.%N)-$t0"|bc)"
sleep 3
kill -9 ${pids[2]}; t1=$(date +%s.%N)
while [ -e $D/h0/peers/n2.sock ] || [ -e $D/h1/peers/n2.sock ]; do sleep 0.1; now=$(date +%s.%N); if (( $(echo "$now - $t1 > 120" | bc) )); then echo TIMEOUT; break; fi; done
echo "killed node gone from both $(echo "$(date +%s.%N)-$t1"|bc) s"
kill ${pids[0]} ${pids[1]}; wait 2>/dev/null
grep -h "unreachable\|dropped\|expired" $D/n0.log $D/n1.log | cut -c1-200 | head -5
