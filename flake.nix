{
  description = "n2p (Nix to Peer): reach a nix-daemon on another machine over iroh";

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

      workspace = (lib.importTOML ./Cargo.toml).workspace.package;
    in
    {
      packages = forAllSystems (
        system: pkgs: {
          n2p = pkgs.rustPlatform.buildRustPackage {
            pname = "n2p";
            inherit (workspace) version;

            # Only what the build reads, so editing docs does not rebuild n2p. tests/ and
            # config/ are named by the n2p package's test targets, which cargo resolves.
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
            cargoLock.lockFile = ./Cargo.lock;
            cargoBuildFlags = [
              "--package"
              "n2p"
            ];

            # The tests start nix-daemons and n2p servers; they run in CI (.ci/run), not in
            # the build sandbox.
            doCheck = false;

            meta = {
              description = "Forward nix-daemon connections between machines over iroh (QUIC)";
              homepage = workspace.repository;
              license = with lib.licenses; [
                mit
                asl20
              ];
              mainProgram = "n2p";
              platforms = systems;
            };
          };
          default = self.packages.${system}.n2p;
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

      devShells = forAllSystems (
        _system: pkgs: {
          default = pkgs.mkShell {
            packages = with pkgs; [
              cargo
              rustc
              clippy
              rustfmt
              nix
            ];
          };
        }
      );
    };
}
