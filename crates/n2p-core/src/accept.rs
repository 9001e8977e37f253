//! The accept loop every n2p service runs on an incoming connection (the daemon ALPN and
//! the store ALPN alike): streams are taken one by one, at most a few before the peer has
//! proved access, the connection is closed when no proof comes within the deadline, and
//! each stream's task ends with the connection.

use std::{future::Future, sync::Arc, time::Duration};

use iroh::{
    EndpointId,
    endpoint::{Connection, RecvStream},
};
use tokio::{sync::Semaphore, task::JoinSet};
use tracing::{Instrument, debug, warn};

use crate::{
    access::{AccessPolicy, AccessProof},
    daemon::{ACCESS_DENIED, describe_close},
    forward::QuicPair,
    limits::{ConnectionGate, Limits, UnprovenPermit},
};

/// The close reason of a connection that did not prove access in time.
pub const NO_PROOF_IN_TIME: &[u8] = b"no access proof in time";

/// Accepts `conn`'s streams until it ends, running `handle` on each in its own task.
///
/// `service` names the streams in logs ("daemon", "store"). With `bound`, at most that many
/// streams are handled at once and no new one is taken meanwhile (back-pressure). A stream
/// beyond [`Limits`]' unproven allowance is reset; a connection with no proof by the gate's
/// deadline is closed with [`ACCESS_DENIED`]. Returns once every stream task has ended.
pub async fn serve_streams<F, Fut>(
    conn: &Connection,
    service: &'static str,
    limits: &Limits,
    bound: Option<usize>,
    handle: F,
) where
    F: Fn(Connection, Arc<ConnectionGate>, UnprovenPermit, QuicPair) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let peer = conn.remote_id();
    let bound = bound.map(|n| Arc::new(Semaphore::new(n)));
    let gate = Arc::new(ConnectionGate::new(limits));
    // The stream tasks borrow nothing from this loop, so a set owned here and drained on
    // exit bounds their lifetime to the connection's.
    let mut streams = JoinSet::new();
    loop {
        let permit = match &bound {
            Some(bound) => match bound.clone().acquire_owned().await {
                Ok(permit) => Some(permit),
                Err(_) => break,
            },
            None => None,
        };
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let pair = QuicPair::new(send, recv);
                    let unproven = match gate.admit_unproven() {
                        Ok(unproven) => unproven,
                        Err(hit) => {
                            if hit.first {
                                warn!(peer = %peer,
                                    "peer {peer} opened more than {} {service} streams before proving access; resetting the extra ones",
                                    hit.limit
                                );
                            }
                            // Dropping the pair resets the stream.
                            continue;
                        }
                    };
                    let task = handle(conn.clone(), gate.clone(), unproven, pair);
                    streams.spawn(async move {
                        let _permit = permit;
                        task.await
                    }.in_current_span());
                }
                Err(e) => {
                    debug!("{service} connection ended: {}", describe_close(&e));
                    break;
                }
            },
            _ = tokio::time::sleep_until(gate.deadline()), if !gate.is_proven() => {
                if !gate.is_proven() {
                    warn!(peer = %peer,
                        "refused peer {peer}: no access proof within {:?} of connecting",
                        limits.proof_deadline
                    );
                    conn.close(ACCESS_DENIED, NO_PROOF_IN_TIME);
                    break;
                }
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    while streams.join_next().await.is_some() {}
}

/// Reads a stream's access proof within `deadline` and checks it against `policy` (`me` is
/// this node). True when the stream may go on: the connection's gate is marked proven and
/// `unproven` released. Otherwise the connection is closed with [`ACCESS_DENIED`] (a missing
/// proof or a refusal, logged as `refused_as <peer>: <why>`) or the stream had ended; the
/// caller then drops the stream, which resets it.
#[allow(clippy::too_many_arguments)]
pub async fn prove_stream(
    conn: &Connection,
    gate: &ConnectionGate,
    unproven: UnprovenPermit,
    recv: &mut RecvStream,
    policy: &AccessPolicy,
    me: EndpointId,
    deadline: Duration,
    refused_as: &str,
) -> bool {
    let peer = conn.remote_id();
    let mut proof = [0u8; AccessProof::LEN];
    match tokio::time::timeout(deadline, recv.read_exact(&mut proof)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!("stream ended before its access proof: {e}");
            return false;
        }
        Err(_) => {
            warn!(peer = %peer, "refused peer {peer}: no access proof within {deadline:?}");
            conn.close(ACCESS_DENIED, NO_PROOF_IN_TIME);
            return false;
        }
    }
    if let Err(refusal) = policy.check_stream(peer, me, &AccessProof(proof)) {
        warn!(peer = %peer, "{refused_as} {peer}: {refusal}");
        conn.close(ACCESS_DENIED, refusal.to_string().as_bytes());
        return false;
    }
    gate.mark_proven();
    drop(unproven);
    true
}
