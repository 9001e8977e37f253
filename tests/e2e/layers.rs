//! The layer map in docs/LAYERS.md, checked: which of our crates may depend on which, and
//! that the mesh's protocol part stays free of I/O.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

/// Our crates and the ones of ours each may depend on (normal or dev), as docs/LAYERS.md
/// draws them. A new crate must be added here and to the map.
const ALLOWED: &[(&str, &[&str])] = &[
    ("n2p-core", &["n2p-nix"]),
    ("n2p-nix", &["n2p-testkit"]),
    ("n2p-cache", &["n2p-core", "n2p-nix", "n2p-testkit"]),
    ("n2p-mesh", &["n2p-core", "n2p-nix"]),
    (
        "n2p",
        &[
            "n2p-core",
            "n2p-mesh",
            "n2p-cache",
            "n2p-nix",
            "n2p-testkit",
        ],
    ),
    ("n2p-testkit", &["n2p-core"]),
    ("n2p-bench", &["n2p-testkit", "n2p-nix"]),
];

/// Crates that may only ever be dev-dependencies of ours.
const DEV_ONLY: &[&str] = &["n2p-testkit"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/n2p sits two levels below the workspace root")
        .to_owned()
}

#[test]
fn crate_dependencies_follow_the_layer_map() {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(name, deps)| (*name, deps.iter().copied().collect()))
        .collect();
    let packages = metadata["packages"].as_array().expect("packages");
    let mut seen = BTreeSet::new();
    for package in packages {
        let name = package["name"].as_str().expect("package name");
        seen.insert(name.to_owned());
        let Some(may) = allowed.get(name) else {
            panic!("crate {name} is not in docs/LAYERS.md: add it to the map and to ALLOWED");
        };
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let dep_name = dep["name"].as_str().expect("dependency name");
            if !dep_name.starts_with("n2p") {
                continue;
            }
            assert!(
                may.contains(dep_name),
                "{name} depends on {dep_name}, which docs/LAYERS.md does not allow"
            );
            let kind = dep["kind"].as_str().unwrap_or("normal");
            assert!(
                !DEV_ONLY.contains(&dep_name) || kind == "dev" || name == "n2p-bench",
                "{name} depends on {dep_name} as a {kind} dependency; it is for tests only"
            );
        }
    }
    for (name, _) in ALLOWED {
        assert!(
            seen.contains(*name),
            "docs/LAYERS.md names {name}, which does not exist"
        );
    }
}

/// The non-test part of a Rust source file.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Whether `word` occurs in `line` as a whole path (`iroh::Endpoint`, not `iroh::EndpointId`).
fn contains_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(at, _)| {
        !line[at + word.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn mesh_proto_does_no_io() {
    let proto = workspace_root().join("crates/n2p-mesh/src/proto");
    let mut files = vec![proto.with_extension("rs")];
    for entry in std::fs::read_dir(&proto).expect("read proto dir") {
        files.push(entry.expect("entry").path());
    }
    // No async runtime, no sockets, no clock reads anywhere in `proto`.
    let forbidden = [
        "tokio",
        "std::net::TcpStream",
        "std::net::UdpSocket",
        "UnixStream",
        "UnixListener",
        "Instant::now",
        "SystemTime::now",
        "iroh::Endpoint",
        "iroh_gossip::net",
        "iroh_gossip::api",
    ];
    for file in &files {
        let code = code_of(file);
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for word in forbidden {
                assert!(
                    !contains_word(line, word),
                    "{} uses {word} in `{}`: the mesh's proto part does no I/O (docs/LAYERS.md)",
                    file.display(),
                    line.trim()
                );
            }
        }
        // Files: only the team module reads them (the team file and its secret).
        if !file.ends_with("team.rs") {
            assert!(
                !code.contains("fs::"),
                "{} touches the file system; only proto::team may (docs/LAYERS.md)",
                file.display()
            );
        }
    }
}
