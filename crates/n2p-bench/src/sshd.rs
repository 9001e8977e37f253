//! Debian's OpenSSH server on loopback (or in a network namespace), for the `ssh-ng://`
//! baselines: what a user
//! would set up instead of n2p. It runs in the foreground (`sshd -D -e`) on a free port
//! with a host key and one authorized client key of its own, public-key authentication
//! only, for the user running the benchmark; the client side trusts exactly that host key.
//!
//! ```ignore
//! let sshd = Sshd::start_at(&dir, None, "127.0.0.1".parse()?)?;   // Err without openssh-server
//! let url = sshd.store_url("local?root=/dev/shm/x/store");
//! nix copy --from $url … with NIX_SSHOPTS = sshd.nix_sshopts()
//! ```

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use n2p_testkit::{
    net::free_tcp_port,
    netns::command_in,
    proc::{Process, find_on_path, try_run_bounded},
};

use crate::{forwarders::READY_TIMEOUT, procfs::output_of};

/// Where Debian's openssh-server puts sshd (not on a normal user's PATH).
const DEBIAN_SSHD: &str = "/usr/sbin/sshd";

/// The privilege-separation directory a root sshd requires; Debian's ssh.service creates
/// it (mode 0755) at each boot.
const PRIVSEP_DIR: &str = "/run/sshd";

/// A running sshd; killed on drop.
pub(crate) struct Sshd {
    process: Process,
    addr: SocketAddr,
    user: String,
    client_key: PathBuf,
    known_hosts: PathBuf,
}

impl Sshd {
    /// The sshd binary, if openssh-server is installed.
    pub(crate) fn binary() -> Option<PathBuf> {
        find_on_path("sshd").or_else(|| {
            let debian = PathBuf::from(DEBIAN_SSHD);
            debian.is_file().then_some(debian)
        })
    }

    /// Starts sshd in the network namespace `ns` (None: this one), listening on `ip`, with
    /// its keys, configuration and log in `dir` (created), and waits until it listens.
    /// Fails when openssh-server or ssh-keygen is missing.
    pub(crate) fn start_at(dir: &Path, ns: Option<&str>, ip: IpAddr) -> Result<Self> {
        let sshd = Self::binary().context(
            "sshd not found (install Debian's openssh-server: apt-get install -y openssh-server)",
        )?;
        if find_on_path("ssh").is_none() || find_on_path("ssh-keygen").is_none() {
            bail!("ssh or ssh-keygen not found (install openssh-client)");
        }
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let user = output_of(Command::new("id").arg("-un")).context("running id -un")?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 && !Path::new(PRIVSEP_DIR).is_dir() {
            eprintln!("creating {PRIVSEP_DIR} (mode 0755), which a root sshd requires");
            fs::create_dir_all(PRIVSEP_DIR)?;
            fs::set_permissions(PRIVSEP_DIR, fs::Permissions::from_mode(0o755))?;
        }
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        for key in [&host_key, &client_key] {
            keygen(key)?;
        }
        let authorized = dir.join("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &authorized)?;
        let addr = SocketAddr::new(ip, free_tcp_port());
        let host_public = fs::read_to_string(host_key.with_extension("pub"))?;
        let known_hosts = dir.join("known_hosts");
        fs::write(&known_hosts, known_hosts_line(addr, &host_public)?)?;
        let config = dir.join("sshd_config");
        fs::write(&config, config_text(addr, &host_key, &authorized, &user))?;

        let mut command = command_in(ns, &sshd);
        command.arg("-D").arg("-e").arg("-f").arg(&config);
        let process = Process::try_spawn_logged("sshd", &mut command, &dir.join("sshd.log"))?;
        process.try_wait_for_line("Server listening on", READY_TIMEOUT)?;
        Ok(Self {
            process,
            addr,
            user,
            client_key,
            known_hosts,
        })
    }

    /// The listening sshd's process id (its sessions are its descendants).
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `ssh-ng://user@127.0.0.1?remote-store=<remote_store>`: the remote `nix-daemon
    /// --stdio` opens `remote_store` itself (a chroot store, say). The port, key and host
    /// key come from [`Self::nix_sshopts`], since Nix 2.8's URL has no port.
    pub(crate) fn store_url(&self, remote_store: &str) -> String {
        format!(
            "ssh-ng://{}@{}?remote-store={remote_store}",
            self.user,
            self.addr.ip()
        )
    }

    /// `NIX_SSHOPTS` for Nix's ssh: this server's port, the client key, this host key only.
    pub(crate) fn nix_sshopts(&self) -> String {
        format!(
            "-p {} -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} \
             -o StrictHostKeyChecking=yes -o BatchMode=yes",
            self.addr.port(),
            self.client_key.display(),
            self.known_hosts.display()
        )
    }
}

/// Generates an ed25519 key pair without a passphrase at `key` and `key.pub`.
fn keygen(key: &Path) -> Result<()> {
    let output = try_run_bounded(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "n2p-bench", "-f"])
            .arg(key),
        READY_TIMEOUT,
        "ssh-keygen",
    )?;
    if !output.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The known_hosts line for a server at `addr` with the public key line `host_public`.
fn known_hosts_line(addr: SocketAddr, host_public: &str) -> Result<String> {
    let mut words = host_public.split_whitespace();
    let (Some(kind), Some(key)) = (words.next(), words.next()) else {
        bail!("unexpected public host key {host_public:?}");
    };
    Ok(format!("[{}]:{} {kind} {key}\n", addr.ip(), addr.port()))
}

/// sshd_config: one listening address, public keys only, one user, nothing forwarded.
/// `StrictModes no` because the files live in a world-writable tmpfs (`/dev/shm`), whose
/// mode sshd would otherwise refuse.
fn config_text(addr: SocketAddr, host_key: &Path, authorized: &Path, user: &str) -> String {
    format!(
        "ListenAddress {addr}\n\
         HostKey {}\n\
         AuthorizedKeysFile {}\n\
         AllowUsers {user}\n\
         AuthenticationMethods publickey\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         UsePAM no\n\
         UseDNS no\n\
         StrictModes no\n\
         AllowTcpForwarding no\n\
         AllowAgentForwarding no\n\
         X11Forwarding no\n\
         PrintMotd no\n\
         PidFile none\n",
        host_key.display(),
        authorized.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_names_the_port() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 2222));
        assert_eq!(
            known_hosts_line(addr, "ssh-ed25519 AAAAC3 n2p-bench\n").expect("a key"),
            "[127.0.0.1]:2222 ssh-ed25519 AAAAC3\n"
        );
        assert!(known_hosts_line(addr, "").is_err());
    }

    #[test]
    fn the_config_allows_keys_only() {
        let text = config_text(
            SocketAddr::from(([127, 0, 0, 1], 2222)),
            Path::new("/k/host"),
            Path::new("/k/auth"),
            "me",
        );
        assert!(text.contains("ListenAddress 127.0.0.1:2222\n"));
        assert!(text.contains("PasswordAuthentication no\n"));
        assert!(text.contains("AuthenticationMethods publickey\n"));
        assert!(text.contains("AllowUsers me\n"));
    }
}
