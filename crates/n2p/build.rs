//! Sets `N2P_VERSION` for `n2p --version`: the package version, plus the git revision when
//! there is one: `$N2P_GIT_REV` (the flake passes the revision it was built from), else
//! `git rev-parse HEAD` of the checkout being built. Without either (a source tarball, the
//! Nix sandbox without a revision), just the package version, silently.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    println!("cargo:rerun-if-env-changed=N2P_GIT_REV");
    println!("cargo:rerun-if-changed=build.rs");
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let rev = std::env::var("N2P_GIT_REV")
        .ok()
        .filter(|rev| !rev.is_empty())
        .or_else(|| git_rev(&manifest_dir));
    let full = match rev {
        Some(rev) => format!("{version} (git {rev})"),
        None => version,
    };
    println!("cargo:rustc-env=N2P_VERSION={full}");
}

/// `git rev-parse --short=12 HEAD` in `dir`, asking cargo to rerun when HEAD or the branch
/// it names moves; `None` when git or a repository is missing.
fn git_rev(dir: &Path) -> Option<String> {
    let rev = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    for watched in ["HEAD", "packed-refs"] {
        if let Some(path) = git(dir, &["rev-parse", "--git-path", watched]) {
            println!("cargo:rerun-if-changed={}", dir.join(path).display());
        }
    }
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(dir, &["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={}", dir.join(path).display());
    }
    Some(rev)
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
