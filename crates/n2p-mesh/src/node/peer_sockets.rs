//! The peers directory: exactly one `<name>.sock` (0600, in a 0700 directory; 0660 in a 0750
//! one when shared with a group, see [`SocketAccess`]) per live peer I may use, each
//! forwarding its connections over one iroh connection to that peer.
//!
//! [`PeerSockets::reconcile`] takes the desired map (socket name → peer) that the peer table
//! computes and creates, replaces or removes sockets to match. Names are trusted only after
//! [`crate::proto::names`] sanitising, and every path is checked again here to lie directly inside
//! the peers directory: nothing is ever created or removed elsewhere.
//!
//! A socket connects to its peer only when a local client first uses it, and closes that
//! connection once it has been idle for the configured period ([`n2p_core::idle`]); the socket
//! itself stays while the peer is live.
//!
//! Removing a socket takes its file away at once, so no new connection can arrive, but lets
//! the transfers in flight through it finish (or fail) on their own; the socket's task
//! waits for them and only then closes its connection to the peer. [`PeerSockets::leave`]
//! removes every socket and bounds that wait.

use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::fs::FileTypeExt,
    path::{Component, Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use iroh::{Endpoint, EndpointAddr, EndpointId};
use n2p_core::{
    access::AccessSecret,
    daemon::{DaemonDialer, ListenerShutdown, serve_local_listener},
    home::{ensure_group_dir, ensure_private_dir},
    unix::{SocketAccess, SocketFileGuard, UnixBindError, bind_listener, clear_stale_socket},
};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

/// One live peer socket and what serves it.
#[derive(Debug)]
struct PeerSocket {
    peer: EndpointId,
    serving: Serving,
    guard: SocketFileGuard,
}

/// The task serving one socket, live or draining: it forwards connections until stopped,
/// waits for those in flight (unless aborted), then closes the connection to the peer.
#[derive(Debug)]
struct Serving {
    shutdown: ListenerShutdown,
    task: JoinHandle<()>,
}

/// The set of peer sockets in the peers directory.
#[derive(Debug)]
pub struct PeerSockets {
    dir: PathBuf,
    endpoint: Endpoint,
    access: AccessSecret,
    sockets: SocketAccess,
    /// How long a socket's connection may stay idle before it is closed.
    idle_close: Duration,
    live: BTreeMap<String, PeerSocket>,
    /// Removed sockets whose transfers are still in flight.
    draining: Vec<Serving>,
    /// Whether the last [`Self::reconcile`] failed to create a socket.
    failed: bool,
}

/// Errors while preparing the peers directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerSocketsError {
    /// The directory could not be created or cleaned.
    #[error("cannot prepare the peers directory {}", dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another running node serves sockets in the directory (a peers directory outside
    /// the home is not covered by the home's lock).
    #[error("another running n2p node serves {} in the peers directory; stop it or choose another --peers-dir", path.display())]
    InUse {
        /// The live socket.
        path: PathBuf,
    },
}

impl PeerSockets {
    /// Prepares `dir` (0700, or 0750 for [`SocketAccess::Group`]) and removes sockets left
    /// there by a previous run; a socket someone still listens on (another node using the
    /// same directory from another home) is refused. Call only while holding the node lock.
    /// Every socket is then bound with `sockets` access, and closes its connection after
    /// `idle_close` without use.
    pub fn open(
        dir: PathBuf,
        endpoint: Endpoint,
        access: AccessSecret,
        sockets: SocketAccess,
        idle_close: Duration,
    ) -> Result<Self, PeerSocketsError> {
        let dir_err = |source| PeerSocketsError::Dir {
            dir: dir.clone(),
            source,
        };
        let prepared = match sockets {
            SocketAccess::Owner => ensure_private_dir(&dir),
            SocketAccess::Group(gid) => ensure_group_dir(&dir, gid),
        };
        prepared.map_err(|e| dir_err(io::Error::other(e)))?;
        for entry in fs::read_dir(&dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let is_socket = entry.file_type().map(|t| t.is_socket()).unwrap_or(false);
            if is_socket && entry.file_name().to_string_lossy().ends_with(".sock") {
                // Only a live socket matters here; a stale one is gone after this, and one
                // that cannot be removed fails its bind later, with the reason.
                if let Err(UnixBindError::InUse { path }) = clear_stale_socket(&entry.path()) {
                    return Err(PeerSocketsError::InUse { path });
                }
            }
        }
        Ok(Self {
            dir,
            endpoint,
            access,
            sockets,
            idle_close,
            live: BTreeMap::new(),
            draining: Vec::new(),
            failed: false,
        })
    }

    /// Whether the last [`Self::reconcile`] could not create a socket it should have: the
    /// caller reconciles again at the next chance even when nothing changed.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Makes the directory hold exactly `desired` (socket file name → peer).
    pub fn reconcile(&mut self, desired: &BTreeMap<String, EndpointId>) {
        self.failed = false;
        let stale: Vec<String> = self
            .live
            .iter()
            // Ids compare by their bytes: they are public, and `EndpointId`'s `==` is
            // constant-time, 32 calls per compare (about 1 % of a 100-node start's CPU here).
            .filter(|(name, s)| {
                desired.get(*name).map(EndpointId::as_bytes) != Some(s.peer.as_bytes())
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.remove(&name, "is gone");
        }
        for (name, peer) in desired {
            if !self.live.contains_key(name) {
                self.add(name, *peer);
            }
        }
    }

    fn add(&mut self, name: &str, peer: EndpointId) {
        let Some(path) = self.path_for(name) else {
            warn!("not creating a socket for unsafe name {name:?}");
            self.failed = true;
            return;
        };
        let (listener, guard) = match bind_listener(&path, self.sockets) {
            Ok(bound) => bound,
            Err(e) => {
                warn!("cannot create peer socket: {e}");
                self.failed = true;
                return;
            }
        };
        let dialer = Arc::new(DaemonDialer::new(
            self.endpoint.clone(),
            EndpointAddr::new(peer),
            &self.access,
        ));
        let shutdown = ListenerShutdown::new();
        let span = info_span!("peer_socket", name = %stem(name));
        let task = tokio::spawn(
            {
                let shutdown = shutdown.clone();
                let idle_close = self.idle_close;
                async move {
                    let serving = serve_local_listener(listener, dialer.clone(), shutdown.clone());
                    tokio::select! {
                        _ = serving => {}
                        never = dialer.close_when_idle(idle_close, || shutdown.in_flight() > 0) => match never {},
                    }
                    dialer.close().await;
                }
            }
            .instrument(span),
        );
        info!(target: "n2p", "peer {} ({}) is at unix://{}", stem(name), peer.fmt_short(), path.display());
        self.live.insert(
            name.to_owned(),
            PeerSocket {
                peer,
                serving: Serving { shutdown, task },
                guard,
            },
        );
    }

    /// Removes the socket file at once and stops accepting on it; its transfers in flight
    /// go on, and its task closes the connection to the peer after the last one ends.
    fn remove(&mut self, name: &str, why: &str) {
        self.draining.retain(|d| !d.task.is_finished());
        if let Some(socket) = self.live.remove(name) {
            drop(socket.guard);
            socket.serving.shutdown.stop();
            let in_flight = socket.serving.shutdown.in_flight();
            if in_flight > 0 {
                info!(target: "n2p", "peer {} ({}) {why}; socket removed, {in_flight} transfer(s) in flight may finish", stem(name), socket.peer.fmt_short());
            } else {
                info!(target: "n2p", "peer {} ({}) {why}; socket removed", stem(name), socket.peer.fmt_short());
            }
            self.draining.push(socket.serving);
        }
    }

    /// Removes every socket (on shutdown); transfers in flight go on as after
    /// [`Self::reconcile`] removed their socket.
    pub fn clear(&mut self) {
        let names: Vec<String> = self.live.keys().cloned().collect();
        for name in names {
            self.remove(&name, "stays, but I am leaving");
        }
    }

    /// Removes every socket at once, waits up to `bound` for the transfers in flight
    /// through them (and through sockets removed earlier) to end on their own, then aborts
    /// the rest, which resets them: the peer's daemon sees an error, never a clean end, and
    /// the local Nix client a connection closed without a half-close. Returns when every
    /// socket's task has closed its connection.
    pub async fn leave(&mut self, bound: Duration) {
        self.clear();
        let mut draining = std::mem::take(&mut self.draining);
        let in_flight: usize = draining.iter().map(|d| d.shutdown.in_flight()).sum();
        if in_flight > 0 {
            info!(target: "n2p", "waiting up to {bound:?} for {in_flight} transfer(s) in flight to finish");
        }
        let all_done = async {
            for serving in &mut draining {
                (&mut serving.task).await.ok();
            }
        };
        if tokio::time::timeout(bound, all_done).await.is_err() {
            let left: usize = draining.iter().map(|d| d.shutdown.in_flight()).sum();
            warn!(target: "n2p", "aborting {left} transfer(s) still in flight after {bound:?}");
            // Tasks awaited to their end above must not be awaited again.
            draining.retain(|d| !d.task.is_finished());
            for serving in &draining {
                serving.shutdown.abort();
            }
            for serving in &mut draining {
                (&mut serving.task).await.ok();
            }
        }
    }

    /// `dir/name` if `name` is one plain file name ending in `.sock`, else `None`.
    fn path_for(&self, name: &str) -> Option<PathBuf> {
        let mut components = Path::new(name).components();
        let plain = matches!(components.next(), Some(Component::Normal(_)))
            && components.next().is_none()
            && !name.starts_with('.')
            && name.ends_with(".sock");
        plain.then(|| self.dir.join(name))
    }
}

/// A socket file name without `.sock`, for logs.
fn stem(file_name: &str) -> &str {
    file_name.strip_suffix(".sock").unwrap_or(file_name)
}

/// Without a [`PeerSockets::leave`], aborts every transfer at once: each socket's task
/// then resets its streams and closes its connection, in the background.
impl Drop for PeerSockets {
    fn drop(&mut self) {
        for (_, socket) in std::mem::take(&mut self.live) {
            socket.serving.shutdown.abort();
        }
        for serving in std::mem::take(&mut self.draining) {
            serving.shutdown.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use iroh::{SecretKey, address_lookup::memory::MemoryLookup, protocol::Router};
    use n2p_core::{
        access::{AccessPolicy, Permission, ServerAuthority},
        daemon::{DAEMON_ALPN, DaemonService},
        endpoint::{EndpointOptions, bind_builder, bind_endpoint, endpoint_builder},
    };
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{UnixListener, UnixStream},
    };

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A stand-in daemon (unit test only) that answers each connection with what it read,
    /// once the client half-closes.
    fn spawn_echo_daemon(listener: UnixListener) {
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    stream.read_to_end(&mut data).await.ok();
                    stream.write_all(&data).await.ok();
                    stream.shutdown().await.ok();
                });
            }
        });
    }

    /// Two sockets to one peer, one connection through each: on leave, the one that ends
    /// within the bound gets its whole reply; the one that never ends is aborted at the
    /// bound; both sockets' files go at once.
    #[tokio::test]
    async fn leave_drains_what_ends_and_aborts_the_rest_at_the_bound() -> TestResult {
        let dir = tempfile::tempdir()?;
        let secret = AccessSecret::from_bytes([8; 32]);
        let daemon_path = dir.path().join("daemon.sock");
        spawn_echo_daemon(UnixListener::bind(&daemon_path)?);
        let server = bind_endpoint(
            SecretKey::from_bytes(&[1; 32]),
            vec![DAEMON_ALPN.to_vec()],
            &EndpointOptions::loopback(),
        )
        .await?;
        let policy = AccessPolicy::new(
            Arc::new(ServerAuthority::new(secret.clone())),
            Permission::Push,
        );
        let service = DaemonService::new(daemon_path, policy, server.id());
        let router = Router::builder(server).accept(DAEMON_ALPN, service).spawn();
        let lookup = MemoryLookup::new();
        lookup.add_endpoint_info(router.endpoint().addr());
        let builder = endpoint_builder(
            SecretKey::from_bytes(&[2; 32]),
            vec![],
            &EndpointOptions::loopback(),
        )?
        .address_lookup(lookup);
        let client = bind_builder(builder, &EndpointOptions::loopback()).await?;

        let peers = dir.path().join("peers");
        let mut sockets = PeerSockets::open(
            peers.clone(),
            client.clone(),
            secret,
            SocketAccess::Owner,
            n2p_core::idle::PEER_IDLE_CLOSE,
        )?;
        let peer = router.endpoint().id();
        sockets.reconcile(&BTreeMap::from([
            ("a.sock".to_owned(), peer),
            ("b.sock".to_owned(), peer),
        ]));
        let mut ending = UnixStream::connect(peers.join("a.sock")).await?;
        let mut stuck = UnixStream::connect(peers.join("b.sock")).await?;
        ending.write_all(b"first half, ").await?;
        stuck.write_all(b"never finished").await?;
        // Both connections have reached the peer's daemon through the tunnel.
        tokio::time::timeout(Duration::from_secs(10), async {
            while sockets
                .live
                .values()
                .map(|s| s.serving.shutdown.in_flight())
                .sum::<usize>()
                < 2
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await?;

        let bound = Duration::from_secs(2);
        let started = Instant::now();
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            ending.write_all(b"second half").await?;
            ending.shutdown().await?;
            let mut reply = Vec::new();
            ending.read_to_end(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        });
        {
            let leaving = sockets.leave(bound);
            tokio::pin!(leaving);
            // The files go at once, before the drain is over.
            tokio::select! {
                _ = &mut leaving => return Err("leave returned before the bound".into()),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            assert!(!peers.join("a.sock").exists() && !peers.join("b.sock").exists());
            tokio::time::timeout(Duration::from_secs(10), leaving).await?;
        }
        let took = started.elapsed();
        assert!(
            took >= bound && took < bound + Duration::from_secs(5),
            "leave took {took:?} with a bound of {bound:?}"
        );
        assert_eq!(finisher.await??, b"first half, second half");
        // The stuck connection was cut without its echo.
        let mut reply = Vec::new();
        let read = stuck.read_to_end(&mut reply).await;
        assert!(read.is_err() || reply.is_empty(), "got {reply:?}");
        assert!(sockets.draining.is_empty());
        client.close().await;
        router.shutdown().await?;
        Ok(())
    }
}
