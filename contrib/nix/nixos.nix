# NixOS module: `services.n2p`, one mesh node per machine as a hardened systemd service.
#
# The node runs as the system user `n2p` (not root, and by default refused if it is a Nix
# trusted user: then peers can only add paths signed by keys this machine trusts, or
# content-addressed ones). Its peer sockets, /run/n2p/peers/<name>.sock (mode 0660), are for
# the members of `peersGroup`; `n2p status` works for them too (N2P_CONTROL_SOCKET is set
# system-wide). The flake's `nixosModules.default` imports this file and sets `package`.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:
let
  cfg = config.services.n2p;
  inherit (lib)
    mkOption
    mkIf
    types
    ;

  stateDir = "/var/lib/n2p";
  runtimeDir = "/run/n2p";
  credential = "team-secret";

  # The team file is linked here, so that a changed one is a reload, not a restart.
  teamLink = "n2p/team.toml";

  args = import ./args.nix {
    teamFile = "/etc/${teamLink}";
    inherit (cfg)
      topic
      name
      share
      port
      relay
      peersGroup
      extraArgs
      ;
    secretCredential = if cfg.secretFile != null then credential else null;
    cache = if cfg.cache.enable then cfg.cache.address else null;
    peersDir = "${runtimeDir}/peers";
    controlSocket = "${runtimeDir}/control.sock";
  };

  substitute = cfg.cache.enable && cfg.cache.substitute;
  # The keys `substitute` trusts (null when neither the option nor evaluation has them),
  # and the assertion that refuses substitution without them.
  cacheTrust = import ./cache-keys.nix {
    inherit (cfg) teamFile;
    inherit (cfg.cache) trustedPublicKeys;
    inherit substitute;
  };
  cacheKeys = cacheTrust.keys;

  # The node user's groups as this configuration knows them: its primary group and
  # extraGroups, every group that lists it in `members`, and the peers group (the
  # service's SupplementaryGroups). Groups from outside it (LDAP, say) are not seen here;
  # `n2p doctor` asks the daemon itself.
  userConfig = config.users.users.${cfg.user} or { };
  userGroups = lib.filter (group: group != "") (
    [
      (userConfig.group or "")
      cfg.peersGroup
    ]
    ++ userConfig.extraGroups or [ ]
    ++ lib.attrNames (
      lib.filterAttrs (_: group: lib.elem cfg.user group.members) config.users.groups
    )
  );

  # Whether the daemon would treat the node's user as trusted: root, listed by name, through
  # one of its groups, or everyone.
  # `extra-trusted-users` (a free-form setting Nix honours) counts as much as trusted-users.
  trusted =
    (config.nix.settings.trusted-users or [ ]) ++ (config.nix.settings.extra-trusted-users or [ ]);
  trustedAccess =
    cfg.user == "root"
    || lib.any (entry: lib.elem entry trusted) (
      [
        cfg.user
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
        The team file (members, relay, expiry; see config/team.toml in n2p). It holds no
        secret, so a file in the Nix store is fine. It is linked to /etc/n2p/team.toml, and
        a changed one is re-read by a reload (SIGHUP), without a restart: members added or
        removed take effect at once. A relative `secret_file` in it is relative to /etc/n2p.
        A Nix path (`./n2p-team.toml`) is copied to the store, and its `nix_key`s are read
        at evaluation for `cache.substitute`. A string names a file that exists at run
        time (outside the store): it is linked as it is, never read at evaluation (so
        `cache.substitute` needs `cache.trustedPublicKeys`), and a change to its content
        takes `systemctl reload n2p`.
      '';
    };

    secretFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/agenix/n2p-team-secret";
      description = ''
        Absolute path of the team secret, outside the Nix store (agenix, sops-nix, or a
        file of mode 0600). systemd hands a copy to the service as a credential, so the
        file may stay readable by root only. When null, the team file's `secret_file` is
        used, which must then be readable by the n2p user.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` (UDP, QUIC) in the firewall.";
    };

    user = mkOption {
      type = types.str;
      default = "n2p";
      description = ''
        The user the node runs as, and so the user the nix-daemon sees for every peer's push.
        The default `n2p` is created and added to `nix.settings.allowed-users`.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.allowTrustedDaemonAccess || !trustedAccess;
        message = ''
          services.n2p: the user ${cfg.user} is root or a Nix trusted user: nix.settings.trusted-users
          lists it, `*`, or one of its groups (${lib.concatStringsSep ", " userGroups}) as @group.
          Every peer of the team could then add unsigned paths to this store. Run n2p as an
          untrusted user, or set services.n2p.allowTrustedDaemonAccess = true if that is meant.
        '';
      }
      {
        assertion = toString cfg.teamFile != "/etc/${teamLink}";
        message = "services.n2p.teamFile: give the file itself; /etc/${teamLink} is the link to it.";
      }
      {
        assertion = cfg.openFirewall -> cfg.port != null;
        message = "services.n2p.openFirewall needs services.n2p.port.";
      }
      cacheTrust.assertion
    ];

    environment.systemPackages = [ cfg.package ];
    environment.etc.${teamLink}.source = cfg.teamFile;
    # `n2p status` and `n2p mesh peers` find the system node.
    environment.variables.N2P_CONTROL_SOCKET = "${runtimeDir}/control.sock";

    users.users = mkIf (cfg.user == "n2p") {
      n2p = {
        isSystemUser = true;
        group = "n2p";
        home = stateDir;
        description = "n2p mesh node";
      };
    };
    users.groups = {
      ${cfg.peersGroup} = { };
    }
    // lib.optionalAttrs (cfg.user == "n2p") { n2p = { }; };

    # Added, not replacing the default `*`.
    nix.settings.extra-allowed-users = [ cfg.user ];

    # Substitution from the team through the facade; see the `cache.substitute` option.
    nix.settings.extra-substituters = mkIf substitute [ "http://${cfg.cache.address}" ];
    nix.settings.extra-trusted-public-keys = mkIf (substitute && cacheKeys != null) cacheKeys;
    nix.settings.narinfo-cache-negative-ttl = mkIf substitute (lib.mkDefault 10);

    networking.firewall.allowedUDPPorts = mkIf (cfg.openFirewall && cfg.port != null) [ cfg.port ];

    systemd.services.n2p = {
      description = "n2p mesh node (Nix to Peer)";
      documentation = [ "https://github.com/n2p/n2p" ];
      wantedBy = [ "multi-user.target" ];
      requires = [ "nix-daemon.socket" ];
      wants = [ "network-online.target" ];
      after = [
        "network-online.target"
        "nix-daemon.socket"
      ];
      environment.N2P_HOME = stateDir;
      # A new team file is picked up by a reload, not a restart.
      reloadTriggers = [ cfg.teamFile ];

      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = utils.escapeSystemdExecArgs ([ (lib.getExe cfg.package) ] ++ args);
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "on-failure";
        RestartSec = "5s";

        User = cfg.user;
        Group = config.users.users.${cfg.user}.group;
        SupplementaryGroups = [ cfg.peersGroup ];
        StateDirectory = "n2p";
        StateDirectoryMode = "0700";
        RuntimeDirectory = "n2p";
        RuntimeDirectoryMode = "0755";
        LoadCredential = mkIf (cfg.secretFile != null) [ "${credential}:${cfg.secretFile}" ];
        LimitNOFILE = 65536;

        UMask = "0077";
        NoNewPrivileges = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        DevicePolicy = "closed";
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        # iroh's network monitor watches routes and addresses over netlink.
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
          "AF_NETLINK"
        ];
        SystemCallArchitectures = "native";
        # Keeps chown (the peers group) and setrlimit (more open files).
        SystemCallFilter = [ "@system-service" ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}
