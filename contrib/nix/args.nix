# The command line of `n2p mesh join` for the NixOS and nix-darwin modules, from their
# options. Plain Nix (builtins only), so CI evaluates it without nixpkgs and runs the real
# binary on the result (tests/e2e/units.rs): a flag the binary does not know fails there.
{
  topic,
  teamFile,
  # Where the team secret comes from: a systemd credential name, or an absolute path, or
  # null for what the team file itself names.
  secretCredential ? null,
  secretFile ? null,
  name ? null,
  share ? true,
  # The UDP port to bind on every IPv4 and every IPv6 address (null: a random port, IPv4
  # and IPv6).
  port ? null,
  relay ? null,
  peersDir,
  peersGroup ? null,
  controlSocket,
  # The binary-cache facade's IP:PORT, or null to run none.
  cache ? null,
  extraArgs ? [ ],
}:
let
  optional = cond: list: if cond then list else [ ];
in
[
  "mesh"
  "join"
  topic
  "--team"
  (toString teamFile)
  "--peers-dir"
  peersDir
  "--control-socket"
  controlSocket
]
++ optional (secretCredential != null) [
  "--secret-credential"
  secretCredential
]
++ optional (secretFile != null) [
  "--secret-file"
  (toString secretFile)
]
++ optional (name != null) [
  "--name"
  name
]
++ optional (!share) [ "--no-share" ]
++ optional (port != null) [
  "--bind"
  "0.0.0.0:${toString port}"
  "--bind"
  "[::]:${toString port}"
]
++ optional (relay != null) [
  "--relay"
  relay
]
++ (
  if cache != null then
    [
      "--cache"
      cache
    ]
  else
    [ "--no-cache" ]
)
++ optional (peersGroup != null) [
  "--peers-group"
  peersGroup
]
++ extraArgs
