//! End-to-end tests: the real `n2p` binary between real `nix` clients and real `nix-daemon`s,
//! all on this machine (relays disabled, loopback addresses, stores in temp dirs).
//!
//! Each test builds its own daemons, stores and n2p homes, so tests run in parallel. Tests
//! that need Nix print `SKIPPED: ...` and pass when it is missing, except under `CI=true`,
//! where they fail. The `harness` module holds the pieces; one module per scenario.

mod harness;

mod baseline;
mod cli;
mod doctor;
mod drain;
mod faults;
mod layers;
mod mesh;
mod mesh_access;
mod mesh_config;
mod mesh_names;
mod nat;
mod pull;
mod refused;
mod restart;
mod service;
mod soak;
mod tunnel;
mod units;
