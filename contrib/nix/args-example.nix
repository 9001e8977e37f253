# Every option of args.nix set, as the modules would set them; CI evaluates this with
# `nix-instantiate --eval --strict --json` and runs the binary on the result.
let
  args = import ./args.nix;
in
{
  nixos = args {
    topic = "team";
    teamFile = "/etc/n2p/team.toml";
    secretCredential = "team-secret";
    name = "alice";
    share = false;
    port = 7000;
    relay = "disabled";
    peersDir = "/run/n2p/peers";
    peersGroup = "n2p-peers";
    controlSocket = "/run/n2p/control.sock";
    cache = "127.0.0.1:5496";
    extraArgs = [ "-v" ];
  };
  darwin = args {
    topic = "team";
    teamFile = "/etc/n2p/team.toml";
    secretFile = "/var/lib/n2p/team.secret";
    peersDir = "/var/lib/n2p/peers";
    peersGroup = "n2p-peers";
    controlSocket = "/var/lib/n2p/control.sock";
  };
}
