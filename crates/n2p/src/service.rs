//! Running under a service manager: readiness to systemd (`sd_notify`), the team secret from
//! a systemd credential or an absolute path, the peer sockets' Unix group, reloading the
//! team file on SIGHUP, and whether journald captures stderr.
//!
//! The notification is a few lines over a unix datagram socket rather than the `sd-notify`
//! crate: the standard library reaches abstract socket names (`@…`) itself, and readiness is
//! the only message n2p sends.

use std::{
    ffi::{CString, OsStr},
    os::unix::{ffi::OsStrExt, net::UnixDatagram},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use n2p_core::unix::SocketAccess;
use n2p_mesh::{
    node::MeshNode,
    proto::team::{SecretSource, TeamConfig},
};
use tracing::{debug, info, warn};

/// Tells the service manager `state` (e.g. `READY=1`) when it asked to be told
/// (`$NOTIFY_SOCKET`); otherwise does nothing. Failures are logged, never fatal: the node
/// works either way, and systemd reports a missing READY itself.
pub(crate) fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notification(&target, state) {
        warn!(target: "n2p", "cannot tell the service manager {state:?} through NOTIFY_SOCKET={}: {e}", target.to_string_lossy());
    } else {
        debug!("told the service manager {state:?}");
    }
}

fn send_notification(target: &OsStr, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    let sent = match bytes.first() {
        #[cfg(target_os = "linux")]
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            socket.send_to_addr(state.as_bytes(), &addr)?
        }
        Some(b'/') => socket.send_to(state.as_bytes(), Path::new(target))?,
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "only absolute paths and abstract (@) names are supported",
            ));
        }
    };
    if sent != state.len() {
        return Err(std::io::Error::other("the notification was cut short"));
    }
    Ok(())
}

/// Where the team secret comes from when the command line names it: `--secret-file` (an
/// absolute path) or `--secret-credential` (a file in `$CREDENTIALS_DIRECTORY`, where
/// systemd puts what `LoadCredential=` names). `None` when neither is given.
pub(crate) fn secret_override(
    file: Option<&Path>,
    credential: Option<&str>,
) -> anyhow::Result<Option<SecretSource>> {
    if let Some(file) = file {
        if !file.is_absolute() {
            bail!(
                "--secret-file {} is not an absolute path (a relative one would depend on the working directory)",
                file.display()
            );
        }
        return Ok(Some(SecretSource::File(file.to_owned())));
    }
    let Some(name) = credential else {
        return Ok(None);
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("--secret-credential {name:?} is not a credential name (a plain file name)");
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .context(
            "--secret-credential needs $CREDENTIALS_DIRECTORY, which systemd sets for a unit with LoadCredential=; elsewhere use --secret-file PATH",
        )?;
    Ok(Some(SecretSource::File(dir.join(name))))
}

/// The access for the peer sockets (and the control socket): [`SocketAccess::Owner`]
/// without a group, else the group named by `group` (a name or a numeric gid), checked to
/// exist and to be one this process may give files to.
pub(crate) fn socket_access(group: Option<&str>) -> anyhow::Result<SocketAccess> {
    let Some(group) = group else {
        return Ok(SocketAccess::Owner);
    };
    let gid = resolve_group(group)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 && !in_group(gid) {
        bail!(
            "this user is not a member of group {group} (gid {gid}), so n2p cannot give it the peer sockets\n  hint: add the user to it (`usermod -aG {group} USER`, or SupplementaryGroups={group} in a systemd unit)"
        );
    }
    Ok(SocketAccess::Group(gid))
}

/// A group's gid: `group` itself when numeric, else looked up by name.
pub(crate) fn resolve_group(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = CString::new(group).with_context(|| format!("invalid group name {group:?}"))?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: an all-zero `group` is a valid value for getgrnam_r to fill in.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf`'s length is passed with it, and
        // `entry`'s strings point into `buf`, which is only read (gr_gid) before it changes.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc))
                .with_context(|| format!("cannot look up group {group}"));
        }
        if found.is_null() {
            bail!(
                "there is no group named {group} (see /etc/group, or create it: groupadd {group})"
            );
        }
        return Ok(entry.gr_gid);
    }
}

/// Whether this process is in group `gid` (effective or supplementary).
fn in_group(gid: u32) -> bool {
    // SAFETY: getegid has no preconditions and cannot fail.
    if unsafe { libc::getegid() } == gid {
        return true;
    }
    // SAFETY: with a size of 0, getgroups only returns the count.
    let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let Ok(len) = usize::try_from(count) else {
        return false;
    };
    let mut groups = vec![0 as libc::gid_t; len];
    // SAFETY: `groups` holds `count` entries.
    let got = unsafe { libc::getgroups(count, groups.as_mut_ptr()) };
    usize::try_from(got)
        .map(|n| groups[..n.min(len)].contains(&gid))
        .unwrap_or(false)
}

/// Re-reads the team file at `path` and puts it in force; a file that cannot be read or
/// checked leaves the one loaded before in force, and says why. `secret_overridden`: the
/// secret comes from the command line, so the file's secret source does not matter.
pub(crate) async fn reload_team(node: &MeshNode, path: &Path, secret_overridden: bool) {
    let team = match TeamConfig::load(path) {
        Ok(team) => team,
        Err(e) => {
            warn!(target: "n2p", "SIGHUP: cannot reload the team file; keeping the one loaded before: {:#}", anyhow::Error::new(e));
            return;
        }
    };
    if !team.is_open() && team.member_by_id(&node.endpoint().id()).is_none() {
        warn!(target: "n2p", "SIGHUP: the reloaded team file does not list my id {}: the team's members will refuse me", node.endpoint().id());
    }
    match node.reload(team).await {
        Ok(report) => {
            info!(target: "n2p",
                "SIGHUP: reloaded the team file {}: members added {:?}, removed {:?}",
                path.display(), report.added, report.removed
            );
            let ignored: Vec<&str> = report
                .needs_restart
                .iter()
                .copied()
                .filter(|what| !(secret_overridden && what.contains("secret")))
                .collect();
            if !ignored.is_empty() {
                warn!(target: "n2p", "SIGHUP: {} changed in the team file; that takes a restart", ignored.join(" and "));
            }
        }
        Err(e) => warn!(target: "n2p", "SIGHUP: cannot reload the team file: {e}"),
    }
}

/// Whether stderr goes to journald: `$JOURNAL_STREAM` (set by systemd) names the device and
/// inode of stderr. Then log lines carry no timestamps (journald adds its own) and no colours.
pub(crate) fn journald_captures_stderr() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = parse_journal_stream(&value.to_string_lossy()) else {
        return false;
    };
    // What fd 2 is open on (Linux, the only system with journald).
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/fd/2")
        .map(|meta| meta.dev() == dev && meta.ino() == ino)
        .unwrap_or(false)
}

/// `<device>:<inode>`, both decimal.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:1234"), Some((8, 1234)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
    }

    #[test]
    fn a_relative_secret_file_and_a_bad_credential_name_are_refused() {
        let err = secret_override(Some(Path::new("team.secret")), None).expect_err("relative");
        assert!(err.to_string().contains("absolute"), "{err}");
        assert_eq!(
            secret_override(Some(Path::new("/etc/n2p/secret")), None).expect("absolute"),
            Some(SecretSource::File("/etc/n2p/secret".into()))
        );
        for bad in ["", "../x", "a/b", ".."] {
            assert!(secret_override(None, Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(secret_override(None, None).expect("none"), None);
    }

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(resolve_group("4242").expect("numeric"), 4242);
        assert_eq!(resolve_group("root").expect("root exists"), 0);
        let err = resolve_group("no-such-group-n2p").expect_err("missing");
        assert!(err.to_string().contains("groupadd"), "{err}");
    }

    #[test]
    fn notifications_reach_a_path_socket() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path)?;
        send_notification(path.as_os_str(), "READY=1")?;
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"READY=1");
        assert!(send_notification(OsStr::new("relative"), "READY=1").is_err());
        Ok(())
    }
}
