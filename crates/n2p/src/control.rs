//! The local control socket (`$N2P_HOME/control.sock` or `--control-socket`; 0600, or 0660
//! for the peers group): `n2p status` and
//! `n2p mesh peers` ask the running node what it sees.
//!
//! Protocol: the client writes one request line (`status`), the node answers with one JSON
//! document and closes the connection. The answer to `status` is a
//! [`n2p_mesh::status::MeshStatus`]; a request the node cannot answer gets
//! `{"error": "<why>"}`.

use std::{future::Future, path::Path, pin::Pin, sync::Arc, time::Duration};

use anyhow::Context;
use n2p_core::unix::{SocketAccess, SocketFileGuard, bind_listener};
use serde::de::DeserializeOwned;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 256;

/// How long a control client may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// Produces the answer to a request line.
pub(crate) type Responder =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = serde_json::Value> + Send>> + Send + Sync>;

/// Serves the control socket at `path` (reachable as `access` says) until `cancel` fires;
/// the returned guard removes it.
pub(crate) fn serve(
    path: &Path,
    access: SocketAccess,
    respond: Responder,
    cancel: CancellationToken,
) -> anyhow::Result<SocketFileGuard> {
    let (listener, guard) =
        bind_listener(path, access).context("cannot create the control socket")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let respond = respond.clone();
                    tokio::spawn(async move {
                        if let Err(e) = tokio::time::timeout(CONTROL_TIMEOUT, answer(stream, respond)).await {
                            debug!("control client too slow: {e}");
                        }
                    });
                }
            }
        }
    });
    Ok(guard)
}

async fn answer(stream: UnixStream, respond: Responder) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let reply = respond(line.trim().to_owned()).await;
    let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

/// Sends `request` to the node listening at `path` and returns its JSON answer.
pub(crate) async fn request(path: &Path, request: &str) -> anyhow::Result<serde_json::Value> {
    let exchange = async {
        let mut stream = UnixStream::connect(path).await.with_context(|| {
            format!(
                "no running n2p node found (cannot connect to {}); start one with `n2p mesh join <topic>`",
                path.display()
            )
        })?;
        stream.write_all(format!("{request}\n").as_bytes()).await?;
        stream.shutdown().await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        serde_json::from_slice(&reply).context("the node's answer is not valid JSON")
    };
    tokio::time::timeout(CONTROL_TIMEOUT, exchange)
        .await
        .context("the running node did not answer in time")?
}

/// Sends `request` to the node listening at `path` and reads its answer as a `T`; an
/// `{"error": …}` answer becomes this function's error.
pub(crate) async fn ask<T: DeserializeOwned>(path: &Path, request: &str) -> anyhow::Result<T> {
    let answer = self::request(path, request).await?;
    if let Some(error) = answer.get("error").and_then(serde_json::Value::as_str) {
        anyhow::bail!("the running node cannot answer `{request}`: {error}");
    }
    serde_json::from_value(answer).context("unexpected answer from the running node")
}
