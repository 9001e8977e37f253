# The Nix public keys the modules' `cache.substitute` trusts, and the assertion both modules
# make about them. `keys`: `cache.trustedPublicKeys` when set; else the `nix_key` entries of
# the team file, if evaluation can read it (a Nix path, or a string with store context such
# as a derivation's output); else null. A plain string such as "/var/lib/n2p/team.toml"
# names a file that exists only at run time. `assertion` refuses substitution without keys
# and says what to set. Plain Nix (builtins only).
{
  teamFile,
  trustedPublicKeys,
  substitute,
}:
let
  keys =
    if trustedPublicKeys != null then
      trustedPublicKeys
    else if builtins.isPath teamFile || builtins.hasContext (toString teamFile) then
      import ./team-keys.nix teamFile
    else
      null;
in
{
  inherit keys;
  assertion = {
    assertion = substitute -> keys != null;
    message = ''
      services.n2p.cache.substitute needs the Nix keys to trust, and services.n2p.teamFile
      (${toString teamFile}) is a string, so it is not read at evaluation. Set
      services.n2p.cache.trustedPublicKeys (`n2p trust --team FILE` prints the team's keys;
      [ ] for none), or give teamFile as a Nix path, or set services.n2p.cache.substitute = false.
    '';
  };
}
