# The Nix public keys a team file lists (`nix_key` of each `[[member]]`), read at
# evaluation time: the keys the cache facade's answers are signed with. Plain Nix
# (builtins only), evaluated in CI against config/team.toml.
teamFile:
let
  team = builtins.fromTOML (builtins.readFile teamFile);
  members = team.member or [ ];
in
builtins.concatMap (member: if member ? nix_key then [ member.nix_key ] else [ ]) members
