# nix-darwin module: `services.n2p`, one mesh node per Mac as a launchd daemon.
#
# Runs as the hidden user `_n2p` (primary group `peersGroup`, so the peer sockets can be
# given to that group), starts once /nix/store is mounted, is restarted by launchd when it
# exits, and logs to /var/log/n2p.log. Its home, /var/lib/n2p, holds `state/` (N2P_HOME:
# keys, 0700), `peers/` (0750, the sockets 0660) and `control.sock`. The flake's
# `darwinModules.default` imports this file and sets `package`.
{
  config,
  lib,
  ...
}:
let
  cfg = config.services.n2p;
  substitute = cfg.cache.enable && cfg.cache.substitute;
  # The keys `substitute` trusts (null when neither the option nor evaluation has them),
  # and the assertion that refuses substitution without them.
  cacheTrust = import ./cache-keys.nix {
    inherit (cfg) teamFile;
    inherit (cfg.cache) trustedPublicKeys;
    inherit substitute;
  };
  cacheKeys = cacheTrust.keys;
  inherit (lib)
    mkOption
    mkIf
    types
    ;

  user = "_n2p";
  home = "/var/lib/n2p";
  logFile = "/var/log/n2p.log";

  args = import ./args.nix {
    # Interpolated, so a Nix path is copied to the store and the daemon's plist refers to
    # the copy (kept from garbage collection with the system); a string stays as it is.
    teamFile = "${cfg.teamFile}";
    inherit (cfg)
      topic
      secretFile
      name
      share
      port
      relay
      peersGroup
      extraArgs
      ;
    peersDir = "${home}/peers";
    cache = if cfg.cache.enable then cfg.cache.address else null;
    controlSocket = "${home}/control.sock";
  };

  # Whether the daemon would treat `_n2p` as trusted: listed by name, everyone, or through
  # one of its groups as this configuration knows them (its primary group `peersGroup`, and
  # every group that lists it in `members`).
  userGroups = [
    cfg.peersGroup
  ]
  ++ lib.attrNames (
    lib.filterAttrs (_: group: lib.elem user (group.members or [ ])) config.users.groups
  );
  # `extra-trusted-users` (a free-form setting Nix honours) counts as much as trusted-users.
  trusted =
    (config.nix.settings.trusted-users or [ ]) ++ (config.nix.settings.extra-trusted-users or [ ]);
  trustedAccess = lib.any (entry: lib.elem entry trusted) (
    [
      user
      "*"
    ]
    ++ map (group: "@${group}") userGroups
  );
in
{
  options.services.n2p = import ./options.nix lib // {
    teamFile = mkOption {
      type = types.path;
      example = lib.literalExpression "./n2p-team.toml";
      description = ''
        The team file (no secret in it). A Nix path (`./n2p-team.toml`) is copied to the
        store, and its `nix_key`s are read at evaluation for `cache.substitute`; a relative
        `secret_file` in it would then be relative to /nix/store, so give `secretFile` (or
        an absolute `secret_file`). A string names a file that exists at run time: it is
        passed as it is and not read at evaluation (so `cache.substitute` needs
        `cache.trustedPublicKeys`). A changed `teamFile` restarts the daemon (its launchd
        arguments change); a run-time file whose content changed is re-read with
        `sudo launchctl kill HUP system/org.n2p.n2p`.
      '';
    };

    secretFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/n2p/team.secret";
      description = ''
        Absolute path of the team secret, outside the Nix store, owned by `_n2p` with mode
        0600 (launchd has no credentials). When null, the team file's `secret_file` is used.
      '';
    };

    peersGroupMembers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "alice" ];
      description = "Local users who may push through the peer sockets.";
    };

    uid = mkOption {
      type = types.int;
      default = 542;
      description = "The uid of `_n2p` (nix-darwin creates users with fixed ids).";
    };

    gid = mkOption {
      type = types.int;
      default = 542;
      description = "The gid of `peersGroup`.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.allowTrustedDaemonAccess || !trustedAccess;
        message = "services.n2p: ${user} is a Nix trusted user; every peer could add unsigned paths. Remove it from nix.settings.trusted-users or set services.n2p.allowTrustedDaemonAccess = true.";
      }
      cacheTrust.assertion
    ];

    environment.systemPackages = [ cfg.package ];
    environment.variables.N2P_CONTROL_SOCKET = "${home}/control.sock";

    users.knownUsers = [ user ];
    users.users.${user} = {
      inherit (cfg) uid;
      inherit (cfg) gid;
      inherit home;
      shell = "/usr/bin/false";
      isHidden = true;
      description = "n2p mesh node";
    };
    users.knownGroups = [ cfg.peersGroup ];
    users.groups.${cfg.peersGroup} = {
      inherit (cfg) gid;
      members = cfg.peersGroupMembers;
      description = "Users who may push through n2p's peer sockets";
    };

    nix.settings.extra-allowed-users = [ user ];

    # Substitution from the team through the facade; see the `cache.substitute` option.
    nix.settings.extra-substituters = lib.mkIf substitute [ "http://${cfg.cache.address}" ];
    nix.settings.extra-trusted-public-keys = lib.mkIf (substitute && cacheKeys != null) cacheKeys;
    nix.settings.narinfo-cache-negative-ttl = lib.mkIf substitute (lib.mkDefault 10);

    # The home is traversable (the peer sockets are below it); n2p creates state/ 0700 and
    # peers/ 0750 itself.
    system.activationScripts.postActivation.text = ''
      mkdir -p ${home}
      chown ${toString cfg.uid}:${toString cfg.gid} ${home}
      chmod 0755 ${home}
      touch ${logFile}
      chown ${toString cfg.uid}:${toString cfg.gid} ${logFile}
      chmod 0640 ${logFile}
    '';

    launchd.daemons.n2p = {
      serviceConfig = {
        Label = "org.n2p.n2p";
        # /nix/store is a volume mounted after launchd starts daemons: wait for it.
        ProgramArguments = [
          "/bin/sh"
          "-c"
          "/bin/wait4path /nix/store && exec ${lib.escapeShellArgs ([ (lib.getExe cfg.package) ] ++ args)}"
        ];
        EnvironmentVariables.N2P_HOME = "${home}/state";
        UserName = user;
        GroupName = cfg.peersGroup;
        RunAtLoad = true;
        KeepAlive = true;
        # launchd's restart pause, so a broken setup does not spin.
        ThrottleInterval = 10;
        StandardOutPath = logFile;
        StandardErrorPath = logFile;
        Umask = 63; # 0077
      };
    };
  };
}
