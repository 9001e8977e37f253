#!/usr/bin/env bash
# Push a store path from one store into another daemon's store through n2p, all on this
# machine: a nix-daemon with its own chroot store, `n2p server` in front of it, `n2p client`
# on its long address, `nix copy --to unix://<client socket>`.
#
#   bash examples/local-push.sh            (needs nix-bin and `cargo build -p n2p`)
set -euo pipefail
cd "$(dirname "$0")/.."
n2p=${N2P:-target/debug/n2p}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; chmod -R u+w "$work"; rm -rf "$work"' EXIT
export NIX_CONFIG=$'experimental-features = nix-command\nsubstituters =\nsandbox = false\nbuild-users-group ='

NIX_DAEMON_SOCKET_PATH="$work/daemon.sock" nix-daemon --store "local?root=$work/dest" &
until [ -S "$work/daemon.sock" ]; do sleep 0.1; done

N2P_HOME="$work/server-home" "$n2p" server --relay disabled --bind 127.0.0.1:0 \
    --daemon-socket "$work/daemon.sock" 2> "$work/server.log" &
until grep -q 'long address' "$work/server.log"; do sleep 0.1; done
address=$(grep 'long address' "$work/server.log" | awk '{print $NF}')

N2P_HOME="$work/client-home" "$n2p" client --relay disabled --bind 127.0.0.1:0 \
    "$address" --socket "$work/client.sock" 2> "$work/client.log" &
until grep -q 'unix:' "$work/client.log"; do sleep 0.1; done

echo "hello from n2p" > "$work/hello.txt"
path=$(nix store add-file --store "local?root=$work/src" "$work/hello.txt")
nix copy --from "local?root=$work/src" --to "unix://$work/client.sock" "$path"
nix path-info --store "unix://$work/daemon.sock" --json "$path"
echo
echo "$path arrived in the other store through n2p"
