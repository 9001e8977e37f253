//! The pull side of n2p: the `n2p/store` ALPN (a read-only view of a node's store, answered
//! through its nix-daemon) and the local HTTP binary-cache facade that stock Nix substitutes
//! from.
