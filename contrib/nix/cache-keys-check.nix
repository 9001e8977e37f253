# Checks of cache-keys.nix that need no nixpkgs, evaluated by CI (.ci/run): which keys the
# modules' `cache.substitute` trusts, and when they refuse. Evaluates to true, or fails with
# the case that went wrong.
let
  keysOf = args: import ./cache-keys.nix args;
  check =
    name: cond:
    if cond then true else throw "cache-keys.nix: ${name}";
  fromPath = keysOf {
    teamFile = ../../config/team.toml;
    trustedPublicKeys = null;
    substitute = true;
  };
  fromString = keysOf {
    teamFile = "/var/lib/n2p/team.toml";
    trustedPublicKeys = null;
    substitute = true;
  };
  given = keysOf {
    teamFile = "/var/lib/n2p/team.toml";
    trustedPublicKeys = [ "k-1:AAAA" ];
    substitute = true;
  };
  notSubstituting = keysOf {
    teamFile = "/var/lib/n2p/team.toml";
    trustedPublicKeys = null;
    substitute = false;
  };
in
builtins.all (x: x) [
  (check "a team file given as a path yields its nix_key entries" (
    fromPath.keys == import ./team-keys.nix ../../config/team.toml && fromPath.keys != [ ]
  ))
  (check "a path team file passes the assertion" fromPath.assertion.assertion)
  (check "a string team file is not read" (fromString.keys == null))
  (check "a string team file without keys is refused" (!fromString.assertion.assertion))
  (check "the refusal says what to set" (
    builtins.match ".*cache.trustedPublicKeys.*" fromString.assertion.message != null
  ))
  (check "given keys win" (given.keys == [ "k-1:AAAA" ] && given.assertion.assertion))
  (check "without substitution nothing is refused" notSubstituting.assertion.assertion)
]
