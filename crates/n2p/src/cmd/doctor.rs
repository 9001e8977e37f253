//! `n2p doctor`: checks what a node needs and says how to fix what is wrong. Each check
//! prints one line (`ok`, `warn` or `FAIL`) and, where there is one, the fix; the command
//! exits non-zero when any check failed. It changes nothing: no directory is created, no
//! lock taken, and the daemon probe adds nothing to the store (see [`probe`] for the one
//! lock file an old daemon may keep).

mod probe;

use std::{
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::bail;
use n2p_core::{endpoint::RelayChoice, home::N2pHome, unix::SocketAccess};
use n2p_mesh::proto::team::{SecretLoadError, TeamConfig, load_secret};

use crate::{cli::DoctorArgs, cli::GlobalArgs, config::PersonalConfig, control, service, setup};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check's outcome.
#[derive(Debug)]
struct Finding {
    status: Status,
    what: &'static str,
    detail: String,
    fix: Option<String>,
}

/// The findings so far.
#[derive(Debug, Default)]
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, status: Status, what: &'static str, detail: String, fix: Option<String>) {
        self.0.push(Finding {
            status,
            what,
            detail,
            fix,
        });
    }
    fn ok(&mut self, what: &'static str, detail: String) {
        self.add(Status::Ok, what, detail, None);
    }
    fn warn(&mut self, what: &'static str, detail: String, fix: impl Into<Option<String>>) {
        self.add(Status::Warn, what, detail, fix.into());
    }
    fn fail(&mut self, what: &'static str, detail: String, fix: impl Into<Option<String>>) {
        self.add(Status::Fail, what, detail, fix.into());
    }
}

/// Clocks before this (2025-01-01) are certainly wrong; announcements carry the time.
const EARLIEST_SANE_CLOCK: Duration = Duration::from_secs(1_735_689_600);

/// How long the relay may take to accept a TCP connection.
const RELAY_TIMEOUT: Duration = Duration::from_secs(3);

/// `n2p doctor`.
pub(crate) async fn run(global: &GlobalArgs, args: DoctorArgs) -> anyhow::Result<()> {
    let home = setup::home(global)?;
    let personal = match PersonalConfig::load_or_default(&home.config_path()) {
        Ok(config) => Some(config),
        Err(e) => {
            println!("FAIL  config.toml: {e}");
            None
        }
    };
    let personal = personal.unwrap_or_default();
    let mut report = Report::default();

    check_home(&mut report, &home);
    let daemon_socket = setup::daemon_socket(
        args.daemon_socket
            .clone()
            .or(personal.daemon_socket.clone()),
    );
    check_daemon(&mut report, &daemon_socket).await;
    check_store_dir(&mut report);
    check_clock(&mut report);
    let team_path = args.team.clone().or(personal.team.clone());
    let team = check_team(&mut report, &home, team_path.as_deref(), &args);
    let relay = global
        .relay
        .clone()
        .or_else(|| team.as_ref().map(|t| t.relay().clone()));
    check_relay(&mut report, relay).await;
    let peers_dir = args
        .service
        .peers_dir
        .clone()
        .or(personal.peers_dir.clone())
        .unwrap_or_else(|| home.peers_dir());
    let group = args
        .service
        .peers_group
        .clone()
        .or(personal.peers_group.clone());
    check_peers_dir(&mut report, &peers_dir, group.as_deref());
    check_running_node(&mut report, &home, &setup::control_socket(global, &home)).await;

    let mut failed = 0;
    for finding in &report.0 {
        let tag = match finding.status {
            Status::Ok => "ok   ",
            Status::Warn => "warn ",
            Status::Fail => {
                failed += 1;
                "FAIL "
            }
        };
        println!("{tag} {}: {}", finding.what, finding.detail);
        if let Some(fix) = &finding.fix {
            println!("      fix: {fix}");
        }
    }
    if failed > 0 {
        bail!("{failed} check(s) failed; see the fixes above");
    }
    Ok(())
}

fn check_home(report: &mut Report, home: &N2pHome) {
    let root = home.root();
    match std::fs::metadata(root) {
        Err(_) => report.ok(
            "home",
            format!(
                "{} does not exist yet; n2p creates it (0700)",
                root.display()
            ),
        ),
        Ok(meta) => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let mine = meta.uid() == unsafe { libc::geteuid() };
            let mode = meta.mode() & 0o777;
            if !mine || mode & 0o077 != 0 {
                report.fail(
                    "home",
                    format!(
                        "{} is open to others (mode {mode:o}{})",
                        root.display(),
                        if mine { "" } else { ", another user's" }
                    ),
                    format!("chmod 700 {} (if it is yours alone)", root.display()),
                );
            } else {
                report.ok("home", format!("{} (mode {mode:o})", root.display()));
            }
            for key in [home.secret_key_path(), home.access_secret_path()] {
                if let Ok(meta) = std::fs::metadata(&key)
                    && meta.mode() & 0o077 != 0
                {
                    report.fail(
                        "keys",
                        format!(
                            "{} is readable by others (mode {:o})",
                            key.display(),
                            meta.mode() & 0o777
                        ),
                        format!("chmod 600 {}", key.display()),
                    );
                }
            }
        }
    }
}

async fn check_daemon(report: &mut Report, socket: &Path) {
    let store_dir = store_dir();
    let facts = tokio::time::timeout(probe::PROBE_TIMEOUT, probe::probe(socket, &store_dir)).await;
    let facts = match facts {
        Ok(Ok(facts)) => facts,
        Ok(Err(e)) => {
            let kind = match &e {
                n2p_nix::WorkerError::Io(io) => Some(io.kind()),
                _ => None,
            };
            let fix = match kind {
                Some(std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                    "start the nix-daemon (e.g. `systemctl start nix-daemon.socket`), or name its socket with --daemon-socket or `daemon_socket` in config.toml".to_owned()
                }
                Some(std::io::ErrorKind::PermissionDenied) => format!(
                    "this user may not open {}: add it to the daemon's allowed-users (nix.conf) and make sure it can reach the socket",
                    socket.display()
                ),
                _ => "check that a nix-daemon listens there".to_owned(),
            };
            // An I/O error speaks for itself, without the "nix-daemon connection" prefix.
            let why = match &e {
                n2p_nix::WorkerError::Io(io) => io.to_string(),
                other => other.to_string(),
            };
            report.fail(
                "nix-daemon",
                format!("cannot talk to {}: {why}", socket.display()),
                fix,
            );
            return;
        }
        Err(_) => {
            report.fail(
                "nix-daemon",
                format!(
                    "{} did not answer within {:?}",
                    socket.display(),
                    probe::PROBE_TIMEOUT
                ),
                "check the daemon's log (journalctl -u nix-daemon)".to_owned(),
            );
            return;
        }
    };
    report.ok(
        "nix-daemon",
        format!(
            "{} answers: Nix {}, protocol {}.{}",
            socket.display(),
            facts
                .nix_version
                .as_deref()
                .unwrap_or("(version not reported)"),
            facts.protocol.0,
            facts.protocol.1
        ),
    );
    let user = user_name();
    if facts.trusted {
        report.warn(
            "trust",
            format!(
                "the daemon lets {user} add unsigned paths (a trusted user, or require-sigs = false): so can every peer allowed to push here"
            ),
            "run n2p as a user outside the daemon's trusted-users (nix.conf), unless that is what you want".to_owned(),
        );
    } else {
        report.ok(
            "trust",
            format!(
                "the daemon does not trust {user}: peers can add only paths signed by keys in its trusted-public-keys, or content-addressed ones"
            ),
        );
    }
}

fn check_store_dir(report: &mut Report) {
    let dir = store_dir();
    if Path::new(&dir).is_dir() {
        report.ok("store", format!("{dir} is here"));
    } else {
        report.warn(
            "store",
            format!("{dir} does not exist on this machine"),
            "fine when the daemon above keeps its store elsewhere (a chroot store); otherwise install Nix".to_owned(),
        );
    }
}

fn check_clock(report: &mut Report) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    if now < EARLIEST_SANE_CLOCK {
        report.fail(
            "clock",
            format!(
                "the clock reads {} s after 1970, before 2025",
                now.as_secs()
            ),
            "set the time (e.g. `timedatectl set-ntp true`): announcements and TLS depend on it"
                .to_owned(),
        );
    } else {
        report.ok("clock", "plausible".to_owned());
    }
}

fn check_team(
    report: &mut Report,
    home: &N2pHome,
    path: Option<&Path>,
    args: &DoctorArgs,
) -> Option<TeamConfig> {
    let Some(path) = path else {
        report.warn(
            "team",
            "no team file configured (only `n2p mesh join` needs one)".to_owned(),
            "pass --team FILE, or set `team = \"...\"` in config.toml".to_owned(),
        );
        return None;
    };
    let team = match TeamConfig::load(path) {
        Ok(team) => team,
        Err(e) => {
            report.fail("team", format!("{e}"), None);
            return None;
        }
    };
    report.ok(
        "team",
        format!(
            "{}: {} member(s), {} team",
            path.display(),
            team.members().len(),
            if team.is_open() { "open" } else { "closed" }
        ),
    );
    let source = match service::secret_override(
        args.service.secret_file.as_deref(),
        args.service.secret_credential.as_deref(),
    ) {
        Ok(source) => source.unwrap_or_else(|| team.secret_source().clone()),
        Err(e) => {
            report.fail("team secret", format!("{e:#}"), None);
            return Some(team);
        }
    };
    match load_secret(&source, |var| std::env::var_os(var)) {
        Ok(_) => report.ok(
            "team secret",
            format!("from {source}: readable, private, long enough"),
        ),
        Err(e) => {
            let fix = match &e {
                SecretLoadError::TooOpen { path, .. } => {
                    Some(format!("chmod 600 {}", path.display()))
                }
                _ => e.hint(),
            };
            report.fail("team secret", format!("{:#}", anyhow::Error::new(e)), fix);
        }
    }
    // Only an existing key: the doctor creates nothing.
    if home.secret_key_path().exists()
        && let Ok(key) = n2p_core::identity::load_or_create_secret_key(home)
    {
        let me = key.public();
        if !team.is_open() && team.member_by_id(&me).is_none() {
            report.warn(
                "team",
                format!("my id {me} is not listed: the members will refuse this node"),
                "add a [[member]] with this id to the team file".to_owned(),
            );
        }
    }
    Some(team)
}

async fn check_relay(report: &mut Report, relay: Option<RelayChoice>) {
    let urls: Vec<iroh::RelayUrl> = match relay.unwrap_or_default() {
        RelayChoice::Disabled => {
            report.ok(
                "relay",
                "disabled: peers are reached on their direct addresses only (LAN, VPN)".to_owned(),
            );
            return;
        }
        RelayChoice::Default => iroh::defaults::prod::default_relay_map().urls(),
        RelayChoice::Custom(url) => vec![url],
    };
    let mut reached = None;
    for url in &urls {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            continue;
        };
        let connect = tokio::net::TcpStream::connect((host.trim_end_matches('.'), port));
        if let Ok(Ok(_)) = tokio::time::timeout(RELAY_TIMEOUT, connect).await {
            reached = Some(url.clone());
            break;
        }
    }
    let names: Vec<String> = urls.iter().map(ToString::to_string).collect();
    match reached {
        Some(url) => report.ok("relay", format!("{url} is reachable")),
        None => report.warn(
            "relay",
            format!("none of {} reachable (offline?)", names.join(", ")),
            "fine on a LAN or offline: direct addresses still work; peers behind other NATs need a relay".to_owned(),
        ),
    }
}

fn check_peers_dir(report: &mut Report, dir: &Path, group: Option<&str>) {
    let access = match service::socket_access(group) {
        Ok(access) => access,
        Err(e) => {
            report.fail("peers group", format!("{e:#}"), None);
            return;
        }
    };
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(_) => {
            let parent_ok = dir.parent().is_some_and(Path::is_dir);
            if matches!(access, SocketAccess::Group(_)) && !parent_ok {
                report.fail(
                    "peers dir",
                    format!(
                        "{} cannot be created: its parent does not exist",
                        dir.display()
                    ),
                    "create the parent directory (a systemd unit's RuntimeDirectory= does)"
                        .to_owned(),
                );
            } else {
                report.ok("peers dir", format!("{} will be created", dir.display()));
            }
            return;
        }
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let mine = meta.uid() == unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o777;
    match access {
        SocketAccess::Group(gid) => {
            if mine && mode == 0o750 && meta.gid() == gid {
                report.ok(
                    "peers dir",
                    format!(
                        "{} (0750, group {gid}): the group's members can push",
                        dir.display()
                    ),
                );
            } else {
                report.fail(
                    "peers dir",
                    format!(
                        "{} is mode {mode:o}, group {}{}; it should be 0750, group {gid}",
                        dir.display(),
                        meta.gid(),
                        if mine { "" } else { ", another user's" }
                    ),
                    format!(
                        "chgrp {gid} {0} && chmod 750 {0} (or remove it: n2p creates it)",
                        dir.display()
                    ),
                );
            }
        }
        SocketAccess::Owner => {
            if mine && mode & 0o077 == 0 {
                report.ok(
                    "peers dir",
                    format!("{} (mode {mode:o}, mine alone)", dir.display()),
                );
            } else {
                report.fail(
                    "peers dir",
                    format!("{} is open to others (mode {mode:o})", dir.display()),
                    format!(
                        "chmod 700 {}, or share it on purpose with --peers-group",
                        dir.display()
                    ),
                );
            }
        }
    }
}

/// Whether a node runs on this home: the process holding its lock (`/proc/locks`, which a
/// node using another control socket still shows) and what the control socket says. A mesh
/// node holding the lock that does not answer here is a warning: this doctor looks at
/// another control socket than the node uses. `n2p server` takes the same lock and has no
/// control socket.
async fn check_running_node(report: &mut Report, home: &N2pHome, control: &Path) {
    let holder = home.lock_holder("node");
    let answer = control::ask::<n2p_mesh::status::MeshStatus>(control, "status").await;
    let pid = |pid: Option<u32>| pid.map_or(String::new(), |pid| format!(" (pid {pid})"));
    match (answer, holder) {
        (Ok(status), _) => report.ok(
            "node",
            format!(
                "running as {} in topic '{}', {} live peer(s){}",
                status.name,
                status.topic,
                status.peers.len(),
                pid(holder)
            ),
        ),
        (Err(_), Some(holder)) if runs_subcommand(holder, "server") => report.ok(
            "node",
            format!("`n2p server` (pid {holder}) runs on this home"),
        ),
        (Err(_), Some(holder)) => report.warn(
            "node",
            format!(
                "a node (pid {holder}) runs on this home but does not answer at {}",
                control.display()
            ),
            format!(
                "give doctor the node's own --control-socket (the system unit's is /run/n2p/control.sock); a second node on {} would be refused",
                home.root().display()
            ),
        ),
        (Err(_), None) => report.ok(
            "node",
            format!(
                "none found: nothing answers at {}, and /proc/locks shows no process holding this home's lock",
                control.display()
            ),
        ),
    }
}

/// Whether process `pid` was started with `subcommand` among its arguments (Linux's
/// `/proc/PID/cmdline`; false if it cannot be read).
fn runs_subcommand(pid: u32, subcommand: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|&b| b == 0)
            .skip(1)
            .any(|arg| arg == subcommand.as_bytes())
    })
}

/// The store directory: `$NIX_STORE_DIR`, else `/nix/store`.
fn store_dir() -> String {
    std::env::var("NIX_STORE_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/nix/store".to_owned())
}

/// This process's user name, or its uid.
fn user_name() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {uid}"))
}
