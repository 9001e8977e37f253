# The Nix public keys the modules' `cache.substitute` trusts: `cache.trustedPublicKeys` when
# set; else the `nix_key` entries of the team file, if evaluation can read it (a Nix path, or
# a string with store context such as a derivation's output); else null, and the modules
# refuse to evaluate. A plain string such as "/var/lib/n2p/team.toml" names a file that
# exists only at run time. Plain Nix (builtins only).
{ teamFile, trustedPublicKeys }:
if trustedPublicKeys != null then
  trustedPublicKeys
else if builtins.isPath teamFile || builtins.hasContext (toString teamFile) then
  import ./team-keys.nix teamFile
else
  null
