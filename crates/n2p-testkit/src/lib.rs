//! The pieces n2p's end-to-end tests and its benchmark runner share: real `nix-daemon`s on
//! chroot stores ([`nix`]), bounded child processes with captured logs ([`proc`]), the n2p
//! binary with a home of its own ([`n2p`]), a bare HTTP/1.1 client ([`http`]), waits that
//! say what they waited for ([`wait`]), free loopback ports ([`net`]), seeded content
//! ([`rand`]), what `/proc` says about a process ([`procfs`]), scratch directories
//! ([`dir`]), network namespaces ([`netns`]), a NAT test bed in them ([`natbed`]) and, with
//! the `relay` feature, a local iroh relay server to run there (`relay`).
//!
//! ```no_run
//! use n2p_testkit::nix::{NixDaemon, SourceStore, assert_copied, assert_copy_succeeds, require_nix};
//!
//! if !require_nix("my_test") {
//!     return;
//! }
//! let daemon = NixDaemon::start();
//! let source = SourceStore::new();
//! let path = source.add_file("hello.txt", b"hello");
//! assert_copy_succeeds(&source, &daemon.store_url(), &[&path]);
//! assert_copied(&source, &daemon.store_url(), &path);
//! ```
//!
//! A test kit fails loudly: most functions panic with a message naming what they did and
//! what they saw, which is what a failing test should print. The few that a benchmark must
//! survive (a forwarder that does not start) have `try_` forms returning a [`Failure`].
//! Every wait is bounded, so a hang fails instead of hanging.

pub mod dir;
pub mod http;
pub mod n2p;
pub mod natbed;
pub mod net;
pub mod netns;
pub mod nix;
pub mod proc;
pub mod procfs;
pub mod rand;
#[cfg(feature = "relay")]
pub mod relay;
pub mod wait;

use std::{env, fmt, io::Write};

/// Says loudly that `test` is skipped because of `reason`: `SKIPPED: <test>: <reason>`
/// straight to the terminal (past libtest's output capture, so it shows even for a passing
/// test). Under `CI=true` it panics instead: CI installs what the tests need, so skipping
/// there would hide a broken setup.
pub fn skip(test: &str, reason: &str) {
    let message = format!("SKIPPED: {test}: {reason}");
    if matches!(env::var("CI").as_deref(), Ok("true" | "1")) {
        panic!("{message}; CI=true does not allow skipping");
    }
    // Written to the process's stderr directly: eprintln! would be swallowed by the capture.
    let _ = writeln!(std::io::stderr().lock(), "\n*** {message} ***\n");
}

/// Why a `try_` operation of the kit failed: one message naming what was tried and what was
/// seen instead (a process's log, a command's stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(String);

impl Failure {
    /// A failure with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}
