//! A local iroh relay server (the `iroh-relay` crate's, in its development shape: relaying
//! over plain HTTP) run inside a network namespace, with QUIC address discovery on its
//! default port so that nodes behind NAT learn their public addresses.
//!
//! ```no_run
//! use n2p_testkit::{natbed::{Layout, NatBed}, relay::TestRelay};
//!
//! let bed = NatBed::create(Layout::BothBehindNat).expect("namespaces");
//! let dir = tempfile::tempdir().expect("dir");
//! let relay = TestRelay::start(bed.public(), dir.path()).expect("relay");
//! // n2p --relay <relay.url()> --relay-ca <relay.ca_file()> ...
//! relay.kill();
//! ```
//!
//! QUIC needs TLS, so the server has a self-signed certificate for its IP address; nodes
//! trust it through `--relay-ca` ([`TestRelay::ca_file`]). The server runs on a thread of this
//! process that joined the namespace, so its sockets live there; [`TestRelay::kill`] (and
//! drop) stops its runtime at once, closing its sockets as a killed process's would.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use iroh_relay::{
    defaults::DEFAULT_RELAY_QUIC_PORT,
    server::{QuicConfig, RelayConfig, Server, ServerConfig},
};

use crate::{
    Failure,
    natbed::RELAY_IP,
    netns::{Netns, spawn_in_netns},
};

/// The relay's HTTP port (iroh-relay's development default).
pub const HTTP_PORT: u16 = 3340;
/// How long the server may take to bind.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running relay server; stopped on drop.
#[derive(Debug)]
pub struct TestRelay {
    url: String,
    ca_file: PathBuf,
    /// The way to stop the server, and its thread; taken by the first stop.
    running: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<Result<(), Failure>>,
}

impl TestRelay {
    /// Starts a relay on [`RELAY_IP`] inside `ns` (which must own that address), writing its
    /// certificate to `dir/relay-ca.pem`.
    pub fn start(ns: &Netns, dir: &Path) -> Result<Self, Failure> {
        let ip = IpAddr::V4(RELAY_IP);
        let cert = rcgen::generate_simple_self_signed(vec![ip.to_string()])
            .map_err(|error| Failure::new(format!("making the relay's certificate: {error}")))?;
        let ca_file = dir.join("relay-ca.pem");
        fs::write(&ca_file, cert.cert.pem())
            .map_err(|error| Failure::new(format!("writing {}: {error}", ca_file.display())))?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| Failure::new(format!("relay TLS: {error}")))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|error| Failure::new(format!("relay TLS: {error}")))?;

        let mut config = ServerConfig::default();
        config.relay = Some(RelayConfig::new(SocketAddr::new(ip, HTTP_PORT)));
        let mut quic = QuicConfig::new(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            DEFAULT_RELAY_QUIC_PORT,
        ));
        quic.server_config = Some(tls);
        config.quic = Some(quic);

        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = spawn_in_netns(ns.path(), move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| Failure::new(format!("relay runtime: {error}")))?;
            runtime.block_on(async move {
                let server = match Server::spawn(config).await {
                    Ok(server) => server,
                    Err(error) => {
                        ready_tx
                            .send(Err(format!("starting the relay server: {error}")))
                            .ok();
                        return;
                    }
                };
                ready_tx.send(Ok(())).ok();
                stop_rx.await.ok();
                drop(server);
            });
            // Dropping the runtime cancels every task and closes every socket at once.
            drop(runtime);
            Ok(())
        })?;
        let relay = Self {
            url: format!("http://{ip}:{HTTP_PORT}"),
            ca_file,
            running: Mutex::new(Some(Running {
                stop: stop_tx,
                thread,
            })),
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => Ok(relay),
            Ok(Err(message)) => Err(Failure::new(message)),
            Err(_) => {
                relay.kill();
                Err(Failure::new(format!(
                    "the relay server did not start within {START_TIMEOUT:?}"
                )))
            }
        }
    }

    /// The relay URL to give nodes (`--relay`, or `relay =` in a team file).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PEM file with the certificate of its QUIC address discovery (`--relay-ca`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Stops the server at once: its connections end without a goodbye. Later calls do
    /// nothing.
    pub fn kill(&self) {
        let running = self.running.lock().ok().and_then(|mut r| r.take());
        if let Some(Running { stop, thread }) = running {
            stop.send(()).ok();
            thread.join().ok();
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.kill();
    }
}
