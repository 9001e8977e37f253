{
  description = "n2p (Nix to Peer): move Nix store paths directly between your machines over iroh";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];

      # Calls `f system pkgs` for each supported system; a stand-in for flake-utils.
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
      linuxSystems = lib.filter (lib.hasSuffix "-linux") systems;

      workspace = (lib.importTOML ./Cargo.toml).workspace.package;

      # Only what the build reads, so editing docs does not rebuild n2p. tests/ and config/
      # are named by the n2p package's test targets, which cargo resolves.
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions [
          ./Cargo.toml
          ./Cargo.lock
          ./crates
          ./tests
          ./config
        ];
      };

      n2pFor =
        pkgs:
        pkgs.callPackage ./contrib/nix/package.nix {
          inherit src;
          lockFile = ./Cargo.lock;
          inherit (workspace) version;
          rev = self.shortRev or self.dirtyShortRev or "";
        };

    in
    {
      packages = forAllSystems (
        _system: pkgs: rec {
          n2p = n2pFor pkgs;
          default = n2p;
        }
      );

      apps = forAllSystems (
        system: _pkgs: {
          default = {
            type = "app";
            program = lib.getExe self.packages.${system}.n2p;
            meta.description = "Run n2p";
          };
        }
      );

      overlays.default = final: _prev: { n2p = n2pFor final; };

      nixosModules.default =
        { pkgs, ... }:
        {
          imports = [ ./contrib/nix/nixos.nix ];
          services.n2p.package = lib.mkDefault (n2pFor pkgs);
        };

      darwinModules.default =
        { pkgs, ... }:
        {
          imports = [ ./contrib/nix/darwin.nix ];
          services.n2p.package = lib.mkDefault (n2pFor pkgs);
        };

      devShells = forAllSystems (
        _system: pkgs: {
          default = pkgs.mkShell {
            packages =
              with pkgs;
              [
                cargo
                rustc
                clippy
                rustfmt
                nix
              ]
              # systemd-analyze, for contrib/systemd/verify; systemd builds on Linux only.
              ++ lib.optionals pkgs.stdenv.hostPlatform.isLinux [ systemd ];
          };
        }
      );

      checks = forAllSystems (
        system: pkgs:
        {
          package = self.packages.${system}.n2p;
        }
        // lib.optionalAttrs (lib.elem system linuxSystems) (
          let
            # A machine with the module on, as a user would write it.
            machine =
              extra:
              lib.nixosSystem {
                inherit system;
                modules = [
                  self.nixosModules.default
                  {
                    boot.isContainer = true;
                    system.stateVersion = "25.05";
                    services.n2p = {
                      enable = true;
                      topic = "dev";
                      teamFile = ./config/team.toml;
                      secretFile = "/run/secrets/n2p-team";
                      port = 7000;
                      openFirewall = true;
                    };
                  }
                  extra
                ];
              };
            good = machine { };
            # Running the node as a trusted user is refused unless asked for explicitly.
            trusted = machine { nix.settings.trusted-users = [ "n2p" ]; };
            trustedAllowed = machine {
              nix.settings.trusted-users = [ "n2p" ];
              services.n2p.allowTrustedDaemonAccess = true;
            };
            # Trusted through Nix's extra-trusted-users.
            trustedExtra = machine { nix.settings.extra-trusted-users = [ "n2p" ]; };
            # Trusted through a group the configuration gives the node's user.
            trustedByGroup = machine {
              users.users.n2p.extraGroups = [ "wheel" ];
              nix.settings.trusted-users = [ "@wheel" ];
            };
            # A team file named by a string is not read at evaluation: substitution then
            # needs the keys given.
            runtimeTeam.services.n2p.teamFile = lib.mkForce "/var/lib/n2p/team.toml";
            keysUnknown = machine runtimeTeam;
            key = "alice-n2p-1:pqChU24MTchMY1Q9sSPkbKTqgvCgio4oj6N3MZ9Dwpg=";
            keysGiven = machine {
              imports = [ runtimeTeam ];
              services.n2p.cache.trustedPublicKeys = [ key ];
            };
            evaluates = m: (builtins.tryEval m.config.system.build.toplevel.drvPath).success;
            # An assertion of the configuration fails, with `text` in its message.
            refuses =
              m: text: lib.any (a: !a.assertion && lib.hasInfix text a.message) m.config.assertions;
          in
          {
            # The module evaluates, and its unit is what the module promises.
            module =
              assert evaluates good;
              assert !(evaluates trusted);
              assert refuses trusted "allowTrustedDaemonAccess";
              assert evaluates trustedAllowed;
              assert refuses trustedByGroup "wheel";
              assert refuses trustedExtra "allowTrustedDaemonAccess";
              assert refuses keysUnknown "cache.trustedPublicKeys";
              assert evaluates keysGiven;
              assert lib.elem key keysGiven.config.nix.settings.extra-trusted-public-keys;
              assert lib.elem "n2p" good.config.nix.settings.extra-allowed-users;
              assert lib.elem 7000 good.config.networking.firewall.allowedUDPPorts;
              pkgs.runCommand "n2p-module-check" { } ''
                unit=${good.config.systemd.units."n2p.service".unit}/n2p.service
                grep -q '^Type=notify$' $unit
                grep -q '^User=n2p$' $unit
                grep -q '^LoadCredential=team-secret:/run/secrets/n2p-team$' $unit
                grep -q -- '--secret-credential' $unit
                grep -q '^ProtectSystem=strict$' $unit
                grep -q '^Requires=.*nix-daemon\.socket' $unit
                grep -q '^After=.*nix-daemon\.socket' $unit
                grep -q '^Restart=on-failure$' $unit
                cp $unit $out
              '';

            vm = pkgs.testers.runNixOSTest (import ./contrib/nix/vm-test.nix { inherit self; });
          }
        )
      );
    };
}
