#!/bin/bash
# Two mesh nodes on loopback; node a's facade closes idle peer connections after 500 ms;
# a narinfo GET every 3 s for N rounds; counts the dialer's 0-RTT outcomes in a's log.
BIN=${BIN:-/tmp/n2p-0rtt}; N=${N:-10}
D=/dev/shm/m0; rm -rf $D; mkdir -p $D; cd $D
head -c16 /dev/urandom | xxd -p > team.secret; chmod 600 team.secret
printf '[mesh]\nsecret_file = "team.secret"\nrelay = "disabled"\n' > team.toml
port=$((30000 + RANDOM % 10000))
for i in a b; do
  id=$(N2P_HOME=$D/h$i $BIN id 2>/dev/null); p=$port; [ $i = b ] && p=$((port+1))
  printf '\n[[member]]\nname = "%s"\nid = "%s"\naddrs = ["127.0.0.1:%s"]\n' $i $id $p >> team.toml
done
nix-daemon --version >/dev/null 2>&1
N2P_HOME=$D/hb RUST_LOG=info $BIN --relay disabled --bind 127.0.0.1:$((port+1)) mesh join t --team team.toml --share --daemon-socket $D/dummy.sock --no-cache > $D/b.log 2>&1 &
echo $! > pids
N2P_HOME=$D/ha RUST_LOG=info,n2p_core=debug,n2p_cache=debug $BIN --relay disabled --bind 127.0.0.1:$port mesh join t --team team.toml --no-share --cache 127.0.0.1:$((port+5)) --peer-idle-close-ms 500 > $D/a.log 2>&1 &
echo $! >> pids
sleep 4
for r in $(seq $N); do
  curl -s -o /dev/null -w "%{http_code} %{time_total}\n" http://127.0.0.1:$((port+5))/$(head -c 16 /dev/urandom | xxd -p | tr -d '\n' | head -c 32 | tr '0-9a-f' '0-9a-df-v' ).narinfo
  sleep 3
done
kill $(cat pids)
echo "resumed with 0-RTT: $(grep -c 'resuming the session' a.log); accepted: $(grep -c '0-RTT data accepted' a.log); refused: $(grep -c '0-RTT data rejected' a.log); connected: $(grep -c 'connected to' a.log)"
