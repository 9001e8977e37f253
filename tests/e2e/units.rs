//! What packaging relies on, checked on the real binary: every `ExecStart` in contrib/systemd
//! parses (clap exits 2 on a usage error, and n2p 1 on anything it finds later, such as a
//! missing team file); `n2p completions` and `n2p man` print what the flake installs;
//! `--version` names the git revision of the checkout it was built from.

use std::path::{Path, PathBuf};

use n2p_testkit::dir::ScratchDir;
use n2p_testkit::n2p::{COMMAND_TIMEOUT, n2p_command};
use n2p_testkit::proc::run_bounded;

use crate::harness::N2P;

/// The repository's top directory.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The words of the `ExecStart=` line of the unit file at `path`, binary first.
fn exec_start(path: &Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{} has no ExecStart=", path.display()));
    assert!(
        !line.contains(['"', '\'', '\\']),
        "keep ExecStart free of quoting, so this test splits it as systemd does: {line}"
    );
    line.split_whitespace().map(str::to_owned).collect()
}

/// Runs the binary with `args` (the unit's, minus the binary) in a scratch home, with a
/// scratch credentials directory and the team file moved to a path that does not exist;
/// asserts clap accepted them and n2p failed only later, on purpose.
pub(crate) fn assert_args_parse(args: &[String], what: &str) {
    let scratch = ScratchDir::new("unit-args");
    let missing_team = scratch.join("no-team.toml");
    let mut args: Vec<String> = args.to_vec();
    // The team file is what makes the node stop before it does anything.
    if let Some(i) = args.iter().position(|a| a == "--team") {
        args[i + 1] = missing_team.to_string_lossy().into_owned();
    }
    let output = run_bounded(
        n2p_command(N2P.as_ref())
            .args(&args)
            .env("N2P_HOME", scratch.join("home"))
            .env("HOME", scratch.path())
            .env("CREDENTIALS_DIRECTORY", scratch.path()),
        COMMAND_TIMEOUT,
        what,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "{what}: n2p {} -> {}\n{stderr}",
        args.join(" "),
        output.status
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "{what}: the flags should parse (clap exits 2) and n2p stop on the missing team file:\n{stderr}"
    );
    assert!(
        !stderr.contains("Usage:") && stderr.contains("team"),
        "{what}: expected n2p's error about the team file:\n{stderr}"
    );
}

#[test]
fn every_flag_in_the_systemd_units_parses() {
    for unit in ["n2p.service", "n2p-user.service"] {
        let words = exec_start(&repo().join("contrib/systemd").join(unit));
        assert!(
            words[0].ends_with("/n2p"),
            "{unit}: ExecStart should run n2p: {words:?}"
        );
        assert_args_parse(&words[1..], unit);
    }
}

#[test]
fn completions_man_page_and_version_come_from_the_real_binary() {
    let run = |args: &[&str]| -> String {
        let output = run_bounded(
            n2p_command(N2P.as_ref()).args(args),
            COMMAND_TIMEOUT,
            &format!("n2p {}", args.join(" ")),
        );
        assert!(output.status.success(), "n2p {args:?}: {output:?}");
        String::from_utf8(output.stdout).expect("utf-8 output")
    };
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        assert!(
            script.contains("--peers-group") || script.contains("peers-group"),
            "{shell} completions lack the service flags"
        );
    }
    let page = run(&["man"]);
    assert!(page.contains(".TH n2p 1"), "not a man page: {page}");
    assert!(
        page.contains("completions"),
        "the man page lacks the subcommands"
    );

    let version = run(&["--version"]);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    eprintln!("n2p --version: {version}");
    match head {
        Some(rev) if std::env::var_os("N2P_GIT_REV").is_none() => assert!(
            version.contains(&format!("(git {rev})")),
            "--version should name HEAD {rev}: {version}"
        ),
        _ => assert!(version.starts_with("n2p "), "{version}"),
    }
}

#[test]
fn every_flag_the_nix_modules_pass_parses() {
    if !n2p_testkit::nix::require_nix("every_flag_the_nix_modules_pass_parses") {
        return;
    }
    let example = repo().join("contrib/nix/args-example.nix");
    let output = run_bounded(
        n2p_testkit::nix::nix_command("nix-instantiate")
            .args(["--eval", "--strict", "--json"])
            .arg(&example),
        COMMAND_TIMEOUT,
        "nix-instantiate --eval contrib/nix/args-example.nix",
    );
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("JSON from nix-instantiate");
    for module in ["nixos", "darwin"] {
        let args: Vec<String> = json[module]
            .as_array()
            .unwrap_or_else(|| panic!("{module}: not a list: {json}"))
            .iter()
            .map(|a| a.as_str().expect("string argument").to_owned())
            .collect();
        assert!(args.len() > 4, "{module}: {args:?}");
        assert_args_parse(&args, &format!("the {module} module"));
    }
}

/// The modules' `cache.substitute` trusts exactly the Nix keys the team file lists, read by
/// `contrib/nix/team-keys.nix` at evaluation time: the same keys n2p reads from that file.
#[test]
fn the_nix_modules_trust_the_keys_the_team_file_lists() {
    if !n2p_testkit::nix::require_nix("the_nix_modules_trust_the_keys_the_team_file_lists") {
        return;
    }
    let team_file = repo().join("config/team.toml");
    let expr = format!(
        "import {} {}",
        repo().join("contrib/nix/team-keys.nix").display(),
        team_file.display()
    );
    let output = run_bounded(
        n2p_testkit::nix::nix_command("nix-instantiate")
            .args(["--eval", "--strict", "--json", "--expr"])
            .arg(&expr),
        COMMAND_TIMEOUT,
        "nix-instantiate --eval contrib/nix/team-keys.nix",
    );
    assert!(output.status.success(), "{output:?}");
    let from_nix: Vec<String> =
        serde_json::from_slice(&output.stdout).expect("a JSON list of strings");
    let team = n2p_mesh::proto::team::TeamConfig::load(&team_file).expect("config/team.toml");
    let from_n2p: Vec<String> = team.nix_keys().iter().map(|k| k.to_string()).collect();
    assert!(!from_n2p.is_empty(), "config/team.toml lists no nix_key");
    assert_eq!(from_nix, from_n2p);
}
