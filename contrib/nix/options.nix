# The options the NixOS and nix-darwin modules share; each module adds its own (the team
# file's handling, the secret's, users and firewall).
lib:
let
  inherit (lib) mkOption mkEnableOption types;
in
{
  enable = mkEnableOption "n2p, a Nix to Peer mesh node sharing this machine's nix-daemon with a team";

  package = mkOption {
    type = types.package;
    description = "The n2p package (the flake's module sets its own).";
  };

  topic = mkOption {
    type = types.str;
    example = "dev";
    description = "The mesh topic name; with the team secret it gives the gossip topic.";
  };

  name = mkOption {
    type = types.nullOr types.str;
    default = null;
    description = "The name to announce (a team file entry for this node's id wins); default: the host name.";
  };

  share = mkOption {
    type = types.bool;
    default = true;
    description = "Let the team push into this machine's nix-daemon.";
  };

  port = mkOption {
    type = types.nullOr types.port;
    default = null;
    example = 7000;
    description = ''
      The UDP port to listen on, on every IPv4 address and, where the machine has IPv6,
      every IPv6 address (`--bind 0.0.0.0:PORT --bind [::]:PORT`). null: a random port, on
      the same addresses. Fixed ports go with `addrs` in the team file.
    '';
  };

  relay = mkOption {
    type = types.nullOr types.str;
    default = null;
    example = "disabled";
    description = "`default`, `disabled` or a relay URL; null keeps the team file's choice.";
  };

  peersGroup = mkOption {
    type = types.str;
    default = "n2p-peers";
    description = "The group whose members may use the peer sockets (and `n2p status`).";
  };

  allowTrustedDaemonAccess = mkOption {
    type = types.bool;
    default = false;
    description = ''
      Allow running the node as root or as a Nix trusted user. Then every peer the team
      admits acts as a trusted Nix user here: it can add unsigned paths to this store.
    '';
  };

  cache = {
    enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run the local binary-cache facade: Nix substitutes from every live teammate through
        it (it asks the peers in parallel and answers a miss with a 404 within a second).
      '';
    };

    address = mkOption {
      type = types.str;
      default = "127.0.0.1:5496";
      description = ''
        Where the facade listens (IP:PORT). Keep it on loopback: anyone who can reach it
        can read what the team's stores hold. Fixed, so nix.conf can name it.
      '';
    };

    substitute = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Add the facade to `nix.settings.extra-substituters`, the team's Nix keys
        (`cache.trustedPublicKeys`, by default the team file's `nix_key` entries) to
        `extra-trusted-public-keys`, and lower `narinfo-cache-negative-ttl` to 10 s (by
        default Nix remembers a miss for an hour: a path a teammate has just built would
        stay unfetchable). This is what `n2p trust --team` prints, done for you.
      '';
    };

    trustedPublicKeys = mkOption {
      type = types.nullOr (types.listOf types.str);
      default = null;
      example = [ "alice-n2p-1:pqChU24MTchMY1Q9sSPkbKTqgvCgio4oj6N3MZ9Dwpg=" ];
      description = ''
        The Nix public keys (`name:base64`) that `cache.substitute` trusts. null: the
        `nix_key` entries of `teamFile`, read at evaluation time, which is possible only
        when `teamFile` is a Nix path (`./n2p-team.toml`) or a string with store context (a
        derivation such as `pkgs.writeText`). A plain string, such as
        "/var/lib/n2p/team.toml", is not read at evaluation: then give the keys here
        (`n2p trust --team FILE` prints them), or the module refuses to evaluate while
        `cache.substitute` is on.
      '';
    };
  };

  extraArgs = mkOption {
    type = types.listOf types.str;
    default = [ ];
    example = [ "-v" ];
    description = "More arguments for `n2p mesh join`.";
  };
}
