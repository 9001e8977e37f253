//! Connection costs: a new daemon connection on a warm tunnel (raw worker-protocol handshake
//! plus one query, and a whole `nix path-info` process), and the time from starting a
//! client to its first successful nix operation.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use n2p_testkit::{
    netns::command_in,
    nix::{NIX_CONFIG, nix_command, socket_store_url},
    proc::try_run_timed,
};
use serde::Serialize;

use crate::{
    forwarders::{Forwarder, Net, READY_TIMEOUT, Variant, start_n2p_client},
    nix::NIX_TIMEOUT,
    stats::{Summary, rotated},
    worker::connect_and_query,
};

/// Calls made in a row through one variant before the next takes over.
const BLOCK: usize = 10;

/// One variant's connection costs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnectResult {
    /// The variant.
    pub(crate) variant: Variant,
    /// Connect + handshake + one QueryValidPaths of one path, milliseconds per connection.
    pub(crate) raw_ms: Option<Summary>,
    /// A whole `nix path-info` process (one connection), milliseconds per call.
    pub(crate) nix_ms: Option<Summary>,
    /// Mean of the `nix path-info` calls, milliseconds.
    pub(crate) nix_mean_ms: Option<f64>,
}

/// Connection costs of all variants measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnectResults {
    /// Connections per variant and kind.
    pub(crate) calls: usize,
    /// Per variant.
    pub(crate) variants: Vec<ConnectResult>,
    /// Failures.
    pub(crate) errors: Vec<String>,
}

impl ConnectResults {
    /// The result of `variant`, if measured.
    pub(crate) fn of(&self, variant: Variant) -> Option<&ConnectResult> {
        self.variants.iter().find(|v| v.variant == variant)
    }
}

/// Makes `calls` new connections through each forwarder (dumbpipe excluded: a connector
/// carries one connection), in interleaved blocks; `path` must be valid behind all of them.
pub(crate) fn measure_connections(
    fwds: &mut [Forwarder],
    path: &str,
    calls: usize,
    scratch: &Path,
) -> ConnectResults {
    let indices: Vec<usize> = (0..fwds.len())
        .filter(|i| fwds[*i].variant() != Variant::Dumbpipe)
        .collect();
    let mut raw: Vec<Vec<f64>> = vec![Vec::new(); fwds.len()];
    let mut nix: Vec<Vec<f64>> = vec![Vec::new(); fwds.len()];
    let mut errors = Vec::new();
    let blocks = calls.div_ceil(BLOCK);
    for kind in ["raw", "nix"] {
        for block in 0..blocks {
            for &i in &rotated(&indices, block) {
                let fwd = &mut fwds[i];
                let inv = match fwd.invocation() {
                    Ok(inv) => inv,
                    Err(e) => {
                        errors.push(format!("{}: {e:#}", fwd.variant()));
                        continue;
                    }
                };
                for _ in 0..BLOCK.min(calls - block * BLOCK) {
                    let result = if kind == "raw" {
                        connect_and_query(&inv.socket, path)
                            .map_err(anyhow::Error::from)
                            .and_then(|(took, valid)| {
                                if valid {
                                    Ok(took)
                                } else {
                                    bail!("{path} is not valid behind {}", inv.url)
                                }
                            })
                    } else {
                        let mut command = nix_command("nix");
                        command.args(["path-info", "--store", &inv.url, path]);
                        try_run_timed(&mut command, None, &scratch.join("conn.err"), NIX_TIMEOUT)
                            .and_then(|t| t.check("nix path-info"))
                            .map(|t| t.elapsed)
                            .map_err(anyhow::Error::from)
                    };
                    match result {
                        Ok(took) => {
                            let ms = took.as_secs_f64() * 1000.0;
                            if kind == "raw" {
                                raw[i].push(ms);
                            } else {
                                nix[i].push(ms);
                            }
                        }
                        Err(e) => {
                            errors.push(format!("{} {kind}: {e:#}", fwd.variant()));
                            break;
                        }
                    }
                }
            }
        }
    }
    let variants = indices
        .iter()
        .map(|&i| ConnectResult {
            variant: fwds[i].variant(),
            raw_ms: Summary::of(&raw[i]),
            nix_ms: Summary::of(&nix[i]),
            nix_mean_ms: (!nix[i].is_empty())
                .then(|| nix[i].iter().sum::<f64>() / nix[i].len() as f64),
        })
        .collect();
    errors.truncate(20);
    ConnectResults {
        calls,
        variants,
        errors,
    }
}

/// Start-up of a client until its first successful nix operation.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StartupResult {
    /// What was started.
    pub(crate) tool: String,
    /// Seconds from the start until its socket existed.
    pub(crate) socket_ready_s: Option<Summary>,
    /// Seconds from the start until `nix path-info` through it succeeded.
    pub(crate) first_op_s: Option<Summary>,
    /// Failures.
    pub(crate) errors: Vec<String>,
}

/// How an n2p client under test is started: its binary, where it runs and its
/// `N2P_CONGESTION`.
pub(crate) struct ClientSetup<'a> {
    /// The n2p binary.
    pub(crate) n2p: &'a Path,
    /// Where the client runs (its namespace and bind address).
    pub(crate) net: &'a Net,
    /// `N2P_CONGESTION` (None: n2p's default).
    pub(crate) congestion: Option<&'a str>,
    /// The row's name in the report.
    pub(crate) tool: String,
}

/// Starts `n2p client` on `address` `runs` times (one untimed run first creates its key),
/// each time timing start -> socket -> first successful `nix path-info <path>`.
pub(crate) fn n2p_client_startup(
    setup: &ClientSetup<'_>,
    address: &str,
    dir: &Path,
    path: &str,
    runs: usize,
) -> StartupResult {
    let mut ready = Vec::new();
    let mut first = Vec::new();
    let mut errors = Vec::new();
    let home = dir.join("home");
    for run in 0..=runs {
        let socket = dir.join(format!("s{run}.sock"));
        match one_n2p_startup(setup, &home, address, &socket, dir, path) {
            Ok((r, f)) if run > 0 => {
                ready.push(r.as_secs_f64());
                first.push(f.as_secs_f64());
            }
            Ok(_) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
        fs::remove_file(&socket).ok();
    }
    StartupResult {
        tool: setup.tool.clone(),
        socket_ready_s: Summary::of(&ready),
        first_op_s: Summary::of(&first),
        errors,
    }
}

fn one_n2p_startup(
    setup: &ClientSetup<'_>,
    home: &Path,
    address: &str,
    socket: &Path,
    dir: &Path,
    path: &str,
) -> Result<(Duration, Duration)> {
    let started = Instant::now();
    let mut client = start_n2p_client(
        setup.n2p,
        home,
        address,
        socket,
        setup.net,
        &dir.join("client.log"),
        &[],
        setup.congestion,
    )?;
    let ready = started.elapsed();
    let url = socket_store_url(socket);
    let first = first_successful_path_info(&url, None, &[], path, dir, started)?;
    client.stop(Duration::from_secs(5));
    Ok((ready, first))
}

/// Runs `nix path-info` on `url` (in the namespace `ns`, with `env`) until it succeeds,
/// for at most [`READY_TIMEOUT`]; the time since `started`.
fn first_successful_path_info(
    url: &str,
    ns: Option<&str>,
    env: &[(String, String)],
    path: &str,
    scratch: &Path,
    started: Instant,
) -> Result<Duration> {
    while started.elapsed() < READY_TIMEOUT {
        let mut command = command_in(ns, "nix");
        command
            .env("NIX_CONFIG", NIX_CONFIG)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["path-info", "--store", url, path]);
        let timed = try_run_timed(&mut command, None, &scratch.join("first.err"), NIX_TIMEOUT)?;
        if timed.status.success() {
            return Ok(started.elapsed());
        }
    }
    bail!("nix path-info through {url} did not succeed within {READY_TIMEOUT:?}")
}

/// Times a forwarder's invocation the same way, `runs` times: dumbpipe starts a connector
/// (which waits for a relay first); ssh-ng's nix starts a new ssh connection itself.
pub(crate) fn forwarder_startup(
    fwd: &mut Forwarder,
    dir: &Path,
    path: &str,
    runs: usize,
) -> StartupResult {
    let mut ready = Vec::new();
    let mut first = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let result = fwd.invocation().and_then(|inv| {
            let r = started.elapsed();
            let f = first_successful_path_info(
                &inv.url,
                inv.ns.as_deref(),
                &inv.env,
                path,
                dir,
                started,
            )?;
            Ok((r, f))
        });
        match result {
            Ok((r, f)) => {
                ready.push(r.as_secs_f64());
                first.push(f.as_secs_f64());
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    StartupResult {
        tool: match fwd.variant() {
            Variant::Dumbpipe => "dumbpipe connect-unix".to_owned(),
            Variant::SshNg => "ssh-ng (nix starts ssh)".to_owned(),
            v => v.to_string(),
        },
        socket_ready_s: Summary::of(&ready),
        first_op_s: Summary::of(&first),
        errors,
    }
}

/// Copies `path` from `source_url` straight into the daemon at `socket` (set-up, untimed).
pub(crate) fn seed_path(source_url: &str, socket: &Path, path: &str, scratch: &Path) -> Result<()> {
    let mut command = nix_command("nix");
    command
        .args(["copy", "--from", source_url, "--to"])
        .arg(socket_store_url(socket))
        .arg(path);
    try_run_timed(&mut command, None, &scratch.join("seed.err"), NIX_TIMEOUT)?
        .check("seeding the daemon")
        .map(|_| ())
        .context("copying a path for the connection tests")
}
