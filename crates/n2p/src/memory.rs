//! Giving freed heap memory back to the system in the long-running commands.
//!
//! glibc's allocator keeps the pages of memory freed in the middle of its heap: only the
//! top of the heap is returned on its own. A mesh node's start (handshakes, gossip
//! backlogs, digests) and a burst of transfers leave such holes, and the resident size stays
//! at the burst's high-water mark for the rest of the node's life. Measured on the nodes of
//! an idle 100-node mesh on loopback (docs/BENCHMARKS.md, "Joining through fewer peers, and
//! idle memory"): 12.0-16.4 MB of anonymous memory each, of which `malloc_trim` gave back
//! 4.2-7.0 MB. So the commands that stay up call it every [`TRIM_EVERY`]; elsewhere (musl,
//! macOS) this does nothing.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How often freed heap memory is given back.
pub(crate) const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Gives freed heap memory back every [`TRIM_EVERY`] until dropped.
#[derive(Debug)]
pub(crate) struct HeapTrimmer(JoinHandle<()>);

impl HeapTrimmer {
    /// Starts trimming on the current runtime.
    pub(crate) fn start() -> Self {
        Self(tokio::spawn(async {
            let mut tick = tokio::time::interval(TRIM_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick fires at once, when there is nothing to give back yet.
            tick.tick().await;
            loop {
                tick.tick().await;
                let started = Instant::now();
                give_back_free_memory();
                tracing::trace!("heap trimmed in {:?}", started.elapsed());
            }
        }))
    }
}

impl Drop for HeapTrimmer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Returns the allocator's free pages to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns the allocator's free pages to the system: nothing to do outside glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back_free_memory() {}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// This process's resident anonymous memory, in kB.
    fn rss_anon_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("RssAnon:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("RssAnon in /proc/self/status")
    }

    #[test]
    fn memory_freed_below_a_live_block_is_given_back() {
        // 32 MB in small blocks (below the mmap threshold, so on the heap), then one block
        // that stays, so the freed ones are a hole under it and not the heap's top.
        let mut blocks: Vec<Vec<u8>> = (0..32 * 1024).map(|i| vec![i as u8; 1000]).collect();
        let pinned = vec![1u8; 1000];
        blocks.clear();
        blocks.shrink_to_fit();
        let before = rss_anon_kb();
        give_back_free_memory();
        let after = rss_anon_kb();
        assert_eq!(pinned[999], 1);
        assert!(
            before.saturating_sub(after) >= 16 * 1024,
            "RssAnon went from {before} kB to {after} kB: less than 16 MB given back"
        );
    }
}
