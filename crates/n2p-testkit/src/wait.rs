//! Bounded waits: poll a condition until it holds or time runs out, and say what was awaited
//! and what was seen instead.
//!
//! ```no_run
//! use std::time::Duration;
//! use n2p_testkit::wait::wait_until;
//!
//! let socket = std::path::Path::new("/tmp/x.sock");
//! wait_until("the socket exists", Duration::from_secs(5), || {
//!     socket.exists().then_some(()).ok_or_else(|| "no socket yet".to_owned())
//! });
//! ```

use std::thread;
use std::time::{Duration, Instant};

/// How often the tests' waits look again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How often waits whose duration is measured look again (the benchmark's start-up and
/// readiness times): short, so the polling adds little to what is measured.
pub const MEASURING_POLL_INTERVAL: Duration = Duration::from_millis(2);

/// How often [`assert_holds_for`] looks again; its checks may run n2p commands.
const HOLDS_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `check` every `interval` until it returns Ok, and returns that; the last Err once
/// `timeout` has passed without success. `check` runs at least once.
pub fn poll_until<T, E>(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(last) if started.elapsed() >= timeout => return Err(last),
            Err(_) => thread::sleep(interval),
        }
    }
}

/// Calls `done` every `interval` until it returns true, and returns how long that took; None
/// once `timeout` has passed without.
pub fn time_until(
    timeout: Duration,
    interval: Duration,
    mut done: impl FnMut() -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    poll_until(timeout, interval, || if done() { Ok(()) } else { Err(()) }).ok()?;
    Some(started.elapsed())
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns Ok, and returns how long that took;
/// panics after `timeout` with `what` and the last Err, which should describe what was seen
/// instead.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<(), String>,
) -> Duration {
    let started = Instant::now();
    if let Err(last) = poll_until(timeout, POLL_INTERVAL, check) {
        panic!("timed out after {timeout:?} waiting until {what}; last seen: {last}");
    }
    started.elapsed()
}

/// Checks `check` again and again for `duration` and panics, naming `what`, at the first
/// Err: for things that must NOT happen, which no single look can show.
pub fn assert_holds_for(
    what: &str,
    duration: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let started = Instant::now();
    loop {
        if let Err(seen) = check() {
            panic!(
                "expected {what} for {duration:?}, but after {:?}: {seen}",
                started.elapsed()
            );
        }
        if started.elapsed() >= duration {
            return;
        }
        thread::sleep(HOLDS_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_until_returns_the_last_error_after_the_timeout() {
        let mut calls = 0;
        let result = poll_until(Duration::from_millis(30), Duration::from_millis(5), || {
            calls += 1;
            Err::<(), _>(calls)
        });
        assert!(matches!(result, Err(n) if n >= 2));
    }

    #[test]
    fn poll_until_succeeds_at_once_when_the_check_holds() {
        let result = poll_until(Duration::ZERO, Duration::from_secs(1), || Ok::<(), ()>(()));
        assert!(result.is_ok());
    }
}
