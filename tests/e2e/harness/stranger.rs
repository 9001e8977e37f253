//! An iroh node that nobody admitted: it connects to a running n2p node on one ALPN after
//! another and reports how each connection ended, so a test can show that the handshake
//! gate refuses it whatever protocol it asks for.

use std::time::Duration;

use iroh::{
    EndpointAddr,
    endpoint::{ConnectError, ConnectingError, ConnectionError},
};
use n2p_core::SecretKey;
use n2p_core::daemon::ACCESS_DENIED;
use n2p_core::endpoint::{EndpointOptions, bind_endpoint};

/// How long a refused connection may take to end (a loaded machine included).
const REFUSAL_BOUND: Duration = Duration::from_secs(10);

/// Connects to `target` with each of `alpns` as the identity `key` and returns, per ALPN, the
/// reason of the close if it was an access refusal ([`ACCESS_DENIED`]); panics on any other
/// outcome: a connection still open after the bound, or closed for another reason.
pub(crate) fn refusals(key: SecretKey, target: &EndpointAddr, alpns: &[&[u8]]) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let endpoint = bind_endpoint(key, Vec::new(), &EndpointOptions::loopback())
            .await
            .expect("binding the stranger's endpoint");
        let mut reasons = Vec::new();
        for alpn in alpns {
            let name = String::from_utf8_lossy(alpn).into_owned();
            let ended = tokio::time::timeout(REFUSAL_BOUND, async {
                match endpoint.connect(target.clone(), alpn).await {
                    Ok(conn) => conn.closed().await,
                    Err(ConnectError::Connection { source, .. })
                    | Err(ConnectError::Connecting {
                        source: ConnectingError::ConnectionError { source, .. },
                        ..
                    }) => source,
                    Err(other) => panic!("{name}: the stranger could not connect at all: {other}"),
                }
            })
            .await
            .unwrap_or_else(|_| {
                panic!("{name}: the stranger's connection was still open after {REFUSAL_BOUND:?}")
            });
            match ended {
                ConnectionError::ApplicationClosed(close) if close.error_code == ACCESS_DENIED => {
                    reasons.push(String::from_utf8_lossy(&close.reason).into_owned());
                }
                other => panic!("{name}: the connection ended otherwise than refused: {other}"),
            }
        }
        endpoint.close().await;
        reasons
    })
}
