//! The accept loop every n2p service runs on an incoming connection (the daemon ALPN and
//! the store ALPN alike): streams are taken one by one, at most a few before the peer has
//! proved access, the connection is closed when no proof comes within the deadline, and
//! each stream's task ends with the connection.

use std::{future::Future, sync::Arc, time::Duration};

use iroh::{
    EndpointId,
    endpoint::{AcceptBi, Connection, IncomingZeroRttConnection, RecvStream, VarInt},
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

/// A connection whose streams a service serves, and the peer it is from.
pub trait Served: Clone + Send + Sync + 'static {
    /// The peer's id.
    fn peer(&self) -> EndpointId;
    /// Takes the next stream the peer opens.
    fn accept_bi(&self) -> AcceptBi<'_>;
    /// Closes the connection.
    fn close(&self, code: VarInt, reason: &[u8]);
}

impl Served for Connection {
    fn peer(&self) -> EndpointId {
        self.remote_id()
    }

    fn accept_bi(&self) -> AcceptBi<'_> {
        Connection::accept_bi(self)
    }

    fn close(&self, code: VarInt, reason: &[u8]) {
        Connection::close(self, code, reason)
    }
}

/// A connection still in its handshake that resumed an earlier session with 0-RTT: the
/// peer is the one that session was authenticated as (its ticket names it, and only the
/// holder of that session's secret can use the ticket). Its first streams arrive before
/// the handshake completes and can be answered at once, which saves the round trip the
/// handshake takes. They are replayable: someone who recorded the client's first flight
/// can send it again (without being able to read the answers or go on), so only a service
/// whose requests change nothing may serve streams on it (the store protocol's lookups).
#[derive(Debug, Clone)]
pub struct Resumed {
    conn: IncomingZeroRttConnection,
    peer: EndpointId,
}

impl Resumed {
    /// `conn` if it resumed a session (its peer is known before the handshake completes).
    pub fn of(conn: IncomingZeroRttConnection) -> Result<Self, IncomingZeroRttConnection> {
        match conn.remote_id() {
            Ok(peer) => Ok(Self { conn, peer }),
            Err(_) => Err(conn),
        }
    }

    /// The connection.
    pub fn connection(&self) -> &IncomingZeroRttConnection {
        &self.conn
    }
}

impl Served for Resumed {
    fn peer(&self) -> EndpointId {
        self.peer
    }

    fn accept_bi(&self) -> AcceptBi<'_> {
        self.conn.accept_bi()
    }

    fn close(&self, code: VarInt, reason: &[u8]) {
        self.conn.close(code, reason)
    }
}

/// Accepts `conn`'s streams until it ends, running `handle` on each in its own task.
///
/// `service` names the streams in logs ("daemon", "store"). With `bound`, at most that many
/// streams are handled at once and no new one is taken meanwhile (back-pressure). A stream
/// beyond [`Limits`]' unproven allowance is reset; a connection with no proof by the gate's
/// deadline is closed with [`ACCESS_DENIED`]. Returns once every stream task has ended.
pub async fn serve_streams<C, F, Fut>(
    conn: &C,
    service: &'static str,
    limits: &Limits,
    bound: Option<usize>,
    handle: F,
) where
    C: Served,
    F: Fn(C, Arc<ConnectionGate>, UnprovenPermit, QuicPair) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let peer = conn.peer();
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
    conn: &impl Served,
    gate: &ConnectionGate,
    unproven: UnprovenPermit,
    recv: &mut RecvStream,
    policy: &AccessPolicy,
    me: EndpointId,
    deadline: Duration,
    refused_as: &str,
) -> bool {
    let peer = conn.peer();
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
