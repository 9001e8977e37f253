//! Building the node's iroh endpoint: relay choice, bind address, address lookup and the
//! QUIC transport settings every n2p node shares.
//!
//! With [`RelayChoice::Disabled`] the endpoint uses no relay and no DNS/pkarr lookup at all:
//! it is silent offline and connects over loopback or a LAN by direct addresses.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use iroh::{
    Endpoint, RelayMode, RelayUrl, SecretKey,
    endpoint::{BindOpts, Builder, ControllerFactory, QuicTransportConfig, VarInt, presets},
    tls::CaTlsConfig,
};
use noq_proto::congestion;
use rustls_pki_types::{CertificateDer, pem::PemObject};

/// How long a silent connection lives before it is declared dead: a crashed peer is noticed
/// this long after its last packet. Keep-alives go out four times within it, so a live peer
/// behind a path that drops a few packets is not mistaken for a dead one.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Interval of QUIC keep-alive pings on otherwise idle connections.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// The round-trip time a new connection (or path) assumes before it has measured one; it
/// sets how soon a lost handshake packet is sent again (three times this). QUIC's default,
/// 333 ms, makes every lost handshake packet cost a second; measured on an emulated
/// 120 ms / 2 % loss link, that second sent 2 of 40 first narinfo lookups through a fresh
/// facade past the facade's 1 s deadline (docs/BENCHMARKS.md, "A lost handshake packet").
/// On a path slower than three times this, the first handshake packet is sent twice.
///
/// noq uses it in two more places: as the round-trip estimate (and pacing) of each new path
/// until that path has a sample, and for the grace a connection gets to open a new path
/// after the peer abandons the last one (three probe timeouts of a fresh estimate: about
/// 1 s now, 3 s with 333 ms), after which the connection closes and the next stream dials
/// again. The `tolerant` controller is given it too, so that a path's estimate before its
/// first sample is not taken for the path's RTT ([`crate::congestion::LossJudge::new`]).
pub const INITIAL_RTT: Duration = Duration::from_millis(100);

/// How many daemon streams a peer may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Which relay servers the endpoint uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RelayChoice {
    /// n0's public relays and address lookup (DNS/pkarr).
    #[default]
    Default,
    /// No relays and no lookup: direct addresses only.
    Disabled,
    /// One relay of your own, plus n0's address lookup.
    Custom(RelayUrl),
}

/// A relay choice that is neither `default`, `disabled` nor a URL.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid relay '{0}': use 'default', 'disabled' or a relay URL such as https://relay.example.org"
)]
pub struct RelayChoiceParseError(String);

impl FromStr for RelayChoice {
    type Err = RelayChoiceParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Self::Default),
            "disabled" | "none" | "off" => Ok(Self::Disabled),
            url if url.starts_with("http://") || url.starts_with("https://") => url
                .parse()
                .map(Self::Custom)
                .map_err(|_| RelayChoiceParseError(s.to_owned())),
            _ => Err(RelayChoiceParseError(s.to_owned())),
        }
    }
}

impl fmt::Display for RelayChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Disabled => f.write_str("disabled"),
            Self::Custom(url) => write!(f, "{url}"),
        }
    }
}

/// The QUIC congestion controller of every connection an endpoint makes or accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionControl {
    /// noq's loss-based Cubic: QUIC's usual default; every loss cuts its window, so random
    /// loss holds it far below the link rate.
    Cubic,
    /// Loss-based NewReno (RFC 9002's reference controller).
    NewReno,
    /// Model-based BBRv3: paces at the measured bottleneck rate and does not halve its
    /// rate on every random loss.
    Bbr,
    /// n2p's default: Cubic with HyStart++ that ignores random loss, cutting its window only
    /// when the path shows a queue or loses often ([`crate::congestion`]).
    #[default]
    Tolerant,
}

/// A congestion controller name that is not one of n2p's.
#[derive(Debug, thiserror::Error)]
#[error("invalid congestion controller '{0}': use 'cubic', 'tolerant', 'new-reno' or 'bbr'")]
pub struct CongestionControlParseError(String);

impl FromStr for CongestionControl {
    type Err = CongestionControlParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cubic" => Ok(Self::Cubic),
            "new-reno" | "newreno" => Ok(Self::NewReno),
            "bbr" | "bbr3" => Ok(Self::Bbr),
            "tolerant" => Ok(Self::Tolerant),
            _ => Err(CongestionControlParseError(s.to_owned())),
        }
    }
}

impl fmt::Display for CongestionControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cubic => "cubic",
            Self::NewReno => "new-reno",
            Self::Bbr => "bbr",
            Self::Tolerant => "tolerant",
        })
    }
}

impl CongestionControl {
    fn factory(self) -> Arc<dyn ControllerFactory + Send + Sync + 'static> {
        match self {
            Self::Cubic => Arc::new(congestion::CubicConfig::default()),
            Self::NewReno => Arc::new(congestion::NewRenoConfig::default()),
            Self::Bbr => Arc::new(congestion::Bbr3Config::default()),
            Self::Tolerant => Arc::new(crate::congestion::TolerantCubicConfig::new(INITIAL_RTT)),
        }
    }
}

/// Network settings of an endpoint.
#[derive(Debug, Clone, Default)]
pub struct EndpointOptions {
    /// Relays to use.
    pub relay: RelayChoice,
    /// Bind only these socket addresses, at most one per IP version (none: all interfaces,
    /// random port). Each must bind, except `[::]:PORT`, which iroh is told to skip where
    /// there is no IPv6.
    pub bind: Vec<SocketAddr>,
    /// The congestion controller.
    pub congestion: CongestionControl,
    /// A PEM file of certificates to trust, besides the public roots, for the TLS of the
    /// relays (their HTTPS and their QUIC address discovery): for a relay of your own whose
    /// certificate no public authority signed. It widens trust only for relay TLS; peers
    /// are still authenticated by their ed25519 keys.
    pub relay_ca: Option<PathBuf>,
}

impl EndpointOptions {
    /// No relay, no lookup, bound to a random port on 127.0.0.1: reachable only from this
    /// machine, by full address (tests, and nodes under test).
    pub fn loopback() -> Self {
        Self {
            relay: RelayChoice::Disabled,
            bind: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ..Default::default()
        }
    }
}

/// ` on A, B` for the addresses asked for; empty for none.
fn on_addrs(addrs: &[SocketAddr]) -> String {
    if addrs.is_empty() {
        return String::new();
    }
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    format!(" on {}", list.join(", "))
}

/// Errors while binding the endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointBindError {
    /// The bind address is unusable.
    #[error("invalid bind address {addr}")]
    BindAddr {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: iroh::endpoint::InvalidSocketAddr,
    },
    /// Two bind addresses of one IP version: the endpoint binds one socket per version.
    #[error(
        "cannot bind both {first} and {addr}: give one address per IP version (an IPv4 one and an IPv6 one)"
    )]
    SameVersion {
        /// The first address of that version.
        first: SocketAddr,
        /// The second.
        addr: SocketAddr,
    },
    /// The sockets could not be bound (e.g. the port is taken).
    #[error("cannot bind the iroh endpoint{}", on_addrs(bind))]
    Bind {
        /// The addresses asked for (none: all interfaces, random port).
        bind: Vec<SocketAddr>,
        /// Why.
        #[source]
        source: iroh::endpoint::BindError,
    },
    /// The relay certificate file (`--relay-ca`) is unusable.
    #[error("cannot use the relay certificates in {path}: {reason}")]
    RelayCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The certificates in the PEM file `path`: at least one, all parseable.
fn load_relay_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, EndpointBindError> {
    let fail = |reason: String| EndpointBindError::RelayCa {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| fail(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| fail(error.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".to_owned()));
    }
    Ok(certs)
}

/// The QUIC transport settings n2p uses: short idle timeout with keep-alives (a crashed
/// peer is noticed in seconds), room for many concurrent daemon streams, and the chosen
/// congestion controller. Flow-control windows stay at iroh's defaults.
pub fn transport_config(congestion: CongestionControl) -> QuicTransportConfig {
    QuicTransportConfig::builder()
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .initial_rtt(INITIAL_RTT)
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_STREAMS))
        .congestion_controller_factory(congestion.factory())
        .build()
}

/// An endpoint builder with `secret_key` and `alpns`, configured by `options`; callers add
/// hooks or address lookups before [`bind_builder`].
pub fn endpoint_builder(
    secret_key: SecretKey,
    alpns: Vec<Vec<u8>>,
    options: &EndpointOptions,
) -> Result<Builder, EndpointBindError> {
    let mut builder = match &options.relay {
        RelayChoice::Disabled => {
            Endpoint::builder(presets::Minimal).relay_mode(RelayMode::Disabled)
        }
        RelayChoice::Default => Endpoint::builder(presets::N0),
        RelayChoice::Custom(url) => {
            Endpoint::builder(presets::N0).relay_mode(RelayMode::custom([url.clone()]))
        }
    };
    builder = builder
        .secret_key(secret_key)
        .alpns(alpns)
        .transport_config(transport_config(options.congestion));
    if let Some(path) = &options.relay_ca {
        builder =
            builder.ca_tls_config(CaTlsConfig::default().with_extra_roots(load_relay_ca(path)?));
    }
    if !options.bind.is_empty() {
        builder = builder.clear_ip_transports();
        for (i, &addr) in options.bind.iter().enumerate() {
            if let Some(&first) = options.bind[..i]
                .iter()
                .find(|other| other.is_ipv4() == addr.is_ipv4())
            {
                return Err(EndpointBindError::SameVersion { first, addr });
            }
            // `[::]:PORT` means IPv6 where it exists: iroh is asked not to fail the endpoint
            // when it cannot be bound, so a machine without IPv6 (booted with
            // `ipv6.disable=1`) still starts, on IPv4. The test leaves it out by taking its
            // port: every test machine has IPv6 sockets.
            let required = !(addr.is_ipv6() && addr.ip().is_unspecified());
            builder = builder
                .bind_addr_with_opts(addr, BindOpts::default().set_is_required(required))
                .map_err(|source| EndpointBindError::BindAddr { addr, source })?;
        }
    }
    Ok(builder)
}

/// Binds a builder made by [`endpoint_builder`] with the same `options`.
pub async fn bind_builder(
    builder: Builder,
    options: &EndpointOptions,
) -> Result<Endpoint, EndpointBindError> {
    let endpoint = builder
        .bind()
        .await
        .map_err(|source| EndpointBindError::Bind {
            bind: options.bind.clone(),
            source,
        })?;
    // An unspecified IPv6 address is optional (see `endpoint_builder`): say when it is missing.
    let bound = endpoint.bound_sockets();
    for addr in &options.bind {
        if addr.is_ipv6() && !bound.iter().any(SocketAddr::is_ipv6) {
            tracing::warn!(
                "could not bind {addr} (no IPv6 here, or the port is taken); running on IPv4 only"
            );
        }
    }
    Ok(endpoint)
}

/// Binds an endpoint with `secret_key` and `alpns`, configured by `options`.
pub async fn bind_endpoint(
    secret_key: SecretKey,
    alpns: Vec<Vec<u8>>,
    options: &EndpointOptions,
) -> Result<Endpoint, EndpointBindError> {
    bind_builder(endpoint_builder(secret_key, alpns, options)?, options).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ipv4_and_an_ipv6_address_are_bound_an_unbindable_any_address_is_left_out_and_two_of_one_version_refused()
     {
        let options = EndpointOptions {
            bind: vec![
                SocketAddr::from(([127, 0, 0, 1], 0)),
                "[::1]:0".parse().expect("addr"),
            ],
            ..EndpointOptions::loopback()
        };
        let endpoint = bind_endpoint(SecretKey::from_bytes(&[7; 32]), Vec::new(), &options)
            .await
            .expect("bind both");
        let bound = endpoint.bound_sockets();
        assert!(
            bound
                .iter()
                .any(|a| a.ip() == std::net::Ipv4Addr::LOCALHOST),
            "{bound:?}"
        );
        assert!(
            bound
                .iter()
                .any(|a| a.ip() == std::net::Ipv6Addr::LOCALHOST),
            "{bound:?}"
        );
        endpoint.close().await;

        // `[::]:PORT` that cannot be bound (here: the port is taken) is left out, and the
        // endpoint starts on IPv4 alone.
        let taken = std::net::UdpSocket::bind("[::]:0").expect("bind a v6 socket");
        let port = taken.local_addr().expect("addr").port();
        let options = EndpointOptions {
            bind: vec![
                SocketAddr::from(([127, 0, 0, 1], 0)),
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            ],
            ..EndpointOptions::loopback()
        };
        let endpoint = bind_endpoint(SecretKey::from_bytes(&[7; 32]), Vec::new(), &options)
            .await
            .expect("starts without [::]");
        let bound = endpoint.bound_sockets();
        assert!(bound.iter().all(SocketAddr::is_ipv4), "{bound:?}");
        assert!(!bound.is_empty());
        endpoint.close().await;
        drop(taken);

        let options = EndpointOptions {
            bind: vec![
                SocketAddr::from(([127, 0, 0, 1], 0)),
                SocketAddr::from(([127, 0, 0, 2], 0)),
            ],
            ..EndpointOptions::loopback()
        };
        let err = bind_endpoint(SecretKey::from_bytes(&[7; 32]), Vec::new(), &options)
            .await
            .expect_err("two IPv4 addresses");
        assert_eq!(
            err.to_string(),
            "cannot bind both 127.0.0.1:0 and 127.0.0.2:0: give one address per IP version (an IPv4 one and an IPv6 one)"
        );
    }

    #[test]
    fn relay_choice_parses() {
        assert_eq!(
            "default".parse::<RelayChoice>().ok(),
            Some(RelayChoice::Default)
        );
        assert_eq!(
            "disabled".parse::<RelayChoice>().ok(),
            Some(RelayChoice::Disabled)
        );
        assert!(matches!(
            "https://relay.example.org".parse::<RelayChoice>(),
            Ok(RelayChoice::Custom(_))
        ));
        let err = "sometimes".parse::<RelayChoice>().expect_err("bad");
        assert!(err.to_string().contains("'default', 'disabled'"));
    }

    #[test]
    fn relay_ca_needs_a_readable_file_with_a_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let err = load_relay_ca(&missing).expect_err("no file");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = load_relay_ca(&empty).expect_err("no PEM");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");

        let pem = dir.path().join("relay.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let certs = load_relay_ca(&pem).expect("one certificate");
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].as_ref(), &[0, 1, 2, 3]);
    }

    #[test]
    fn congestion_control_parses_and_prints_back() {
        for cc in [
            CongestionControl::Cubic,
            CongestionControl::NewReno,
            CongestionControl::Bbr,
            CongestionControl::Tolerant,
        ] {
            assert_eq!(cc.to_string().parse::<CongestionControl>().ok(), Some(cc));
        }
        let err = "vegas".parse::<CongestionControl>().expect_err("bad");
        assert!(
            err.to_string()
                .contains("'cubic', 'tolerant', 'new-reno' or 'bbr'")
        );
    }
}
