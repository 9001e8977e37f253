# Two NixOS machines in one team: `a` pushes a store path through /run/n2p/peers/b.sock into
# b's nix-daemon, as a user of the peers group, and a user outside the group is refused. Run
# with `nix build .#checks.x86_64-linux.vm` (needs KVM and nixpkgs; n2p's CI has neither and
# does not run it). Each node's id exists only after its first start, so the test writes the
# team file then, at run time (`teamFile` is a string, not read at evaluation), and reloads
# the nodes (the reload path of a team file change).
{ self }:
{
  name = "n2p-two-nodes";

  defaults =
    { lib, ... }:
    {
      imports = [ self.nixosModules.default ];
      services.n2p = {
        enable = true;
        topic = "vm-test";
        teamFile = "/var/lib/n2p-team/team.toml";
        secretFile = "/etc/n2p-test/team.secret";
        port = 7000;
        openFirewall = true;
        relay = "disabled";
        # The team file is written at run time and lists no `nix_key`: no keys to trust.
        cache.trustedPublicKeys = [ ];
      };
      # A test secret, so it may sit in the store.
      environment.etc."n2p-test/team.secret" = {
        text = "0123456789abcdef0123456789abcdef";
        mode = "0600";
      };
      systemd.tmpfiles.rules = [ "d /var/lib/n2p-team 0755 root root -" ];
      nix.settings.experimental-features = [ "nix-command" ];
      users.users.alice = {
        isNormalUser = true;
        extraGroups = [ "n2p-peers" ];
      };
      # Until the test writes the real team file, an open team keeps the node up. (The
      # secret comes from secretFile; a team file still names one, here never read.)
      system.activationScripts.n2p-test-team = lib.stringAfter [ "users" ] ''
        mkdir -p /var/lib/n2p-team
        [ -e /var/lib/n2p-team/team.toml ] || printf '[mesh]\nsecret_file = "unused"\nrelay = "disabled"\n' > /var/lib/n2p-team/team.toml
      '';
    };

  nodes.a = { };
  nodes.b = { };

  testScript =
    { nodes, ... }:
    ''
      start_all()
      ids = {}
      for m in (a, b):
          m.wait_for_unit("n2p.service")
          ids[m.name] = m.succeed("runuser -u n2p -- n2p id --home /var/lib/n2p").strip()

      team = '[mesh]\nsecret_file = "unused"\nrelay = "disabled"\n'
      for m, ip in ((a, "${nodes.a.networking.primaryIPAddress}"), (b, "${nodes.b.networking.primaryIPAddress}")):
          team += f'\n[[member]]\nname = "{m.name}"\nid = "{ids[m.name]}"\naddrs = ["{ip}:7000"]\n'
      for m in (a, b):
          m.succeed(f"cat > /var/lib/n2p-team/team.toml <<'EOF'\n{team}EOF")
          m.succeed("systemctl reload n2p")

      a.wait_for_file("/run/n2p/peers/b.sock")
      b.wait_for_file("/run/n2p/peers/a.sock")
      a.succeed("stat -c '%a %G' /run/n2p/peers/b.sock | grep -x '660 n2p-peers'")
      a.succeed("su - alice -c 'n2p status'")

      # A content-addressed path, which b's daemon accepts from its untrusted n2p user.
      path = a.succeed("echo 'from a, through n2p' > /tmp/hello && nix-store --add /tmp/hello").strip()
      a.succeed(f"su - alice -c 'nix copy --to unix:///run/n2p/peers/b.sock {path}'")
      b.succeed(f"nix-store --verify-path {path}")
      b.succeed(f"grep -q 'through n2p' {path}")

      # Outside the group, the socket is closed: /run/n2p/peers is 0750, group n2p-peers.
      a.succeed("useradd mallory")
      refused = a.fail("su mallory -c 'nix store ping --store unix:///run/n2p/peers/b.sock' 2>&1")
      # Nix says "cannot connect to socket at '/run/n2p/peers/b.sock': Permission denied"
      # (its quoting of the path differs between versions).
      assert "Permission denied" in refused and "b.sock" in refused, refused
    '';
}
