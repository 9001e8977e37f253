//! The codec against the real Nix CLI: nix32 and hash spellings (`nix hash to-*`), keys
//! (`nix key`), signatures and fingerprints (`nix store sign`, `nix path-info --sigs`), and
//! narinfo files both ways (`nix copy --to file://` parsed by us; our narinfos and NARs
//! accepted, or refused, by `nix copy --from file://`).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Output;

use n2p_nix::{NarHash, NarInfo, PublicKey, SecretKey, Signature, StoreDir, StorePath};
use n2p_testkit::dir::ScratchDir;
use n2p_testkit::nix::{
    NIX_COMMAND_TIMEOUT, PathMetadata, SourceStore, assert_not_valid, nix_command, path_metadata,
    require_nix,
};
use n2p_testkit::proc::{expect_success, run_bounded};
use n2p_testkit::rand::XorShift64;

/// Runs `nix <args>` with the kit's offline settings and returns its output.
fn nix(args: &[&str]) -> Output {
    run_bounded(
        nix_command("nix").args(args),
        NIX_COMMAND_TIMEOUT,
        &format!("nix {}", args.join(" ")),
    )
}

/// Runs `nix <args>`, panics if it fails, returns its stdout.
fn nix_ok(args: &[&str]) -> String {
    expect_success(&nix(args), &format!("nix {}", args.join(" ")))
}

/// Pseudo-random digests, plus the all-zero and all-ones ones.
fn digests() -> Vec<NarHash> {
    let mut rng = XorShift64::new(32);
    let mut digests = vec![NarHash([0; 32]), NarHash([0xff; 32])];
    for _ in 0..8 {
        let mut bytes = [0; 32];
        rng.fill(&mut bytes);
        digests.push(NarHash(bytes));
    }
    digests
}

#[test]
fn hash_spellings_match_nix_hash() {
    if !require_nix("hash_spellings_match_nix_hash") {
        return;
    }
    let digests = digests();
    let base16: Vec<String> = digests.iter().map(NarHash::to_base16).collect();
    let args = |command: &str, values: &[String]| -> Vec<String> {
        let mut args = vec![
            "hash".into(),
            command.into(),
            "--type".into(),
            "sha256".into(),
        ];
        args.extend(values.iter().cloned());
        args
    };
    let run = |args: Vec<String>| -> Vec<String> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nix_ok(&args).lines().map(str::to_owned).collect()
    };
    let nix32 = run(args("to-base32", &base16));
    let sri = run(args("to-sri", &base16));
    let ours_nix32: Vec<String> = digests.iter().map(NarHash::nix32_digest).collect();
    let ours_sri: Vec<String> = digests.iter().map(NarHash::to_sri).collect();
    assert_eq!(nix32, ours_nix32);
    assert_eq!(sri, ours_sri);
    // And back: Nix decodes our nix32, we decode Nix's.
    assert_eq!(run(args("to-base16", &ours_nix32)), base16);
    for (digest, (nix32, sri)) in digests.iter().zip(nix32.iter().zip(&sri)) {
        assert_eq!(format!("sha256:{nix32}").parse::<NarHash>(), Ok(*digest));
        assert_eq!(sri.parse::<NarHash>(), Ok(*digest));
        assert_eq!(NarHash::from_base16(&digest.to_base16()), Ok(*digest));
    }

    // What Nix refuses, we refuse: bits beyond 256, a letter outside the alphabet, a
    // wrong length; and what Nix accepts at the edge (the top bit set), we accept.
    let valid = ours_nix32[2].clone();
    let bad = [
        format!("2{}", &valid[1..]),
        format!("z{}", &valid[1..]),
        format!("{}e", &valid[..51]),
        valid[1..].to_owned(),
        format!("{valid}0"),
    ];
    for text in &bad {
        let output = nix(&["hash", "to-base16", "--type", "sha256", text]);
        assert!(!output.status.success(), "nix accepted {text}");
        assert!(
            format!("sha256:{text}").parse::<NarHash>().is_err(),
            "{text}"
        );
    }
    let edge = format!("1{}", &valid[1..]);
    let nix_edge = nix_ok(&["hash", "to-base16", "--type", "sha256", &edge]);
    let ours = format!("sha256:{edge}")
        .parse::<NarHash>()
        .expect("top bit is in range");
    assert_eq!(nix_edge.trim(), ours.to_base16());
}

#[test]
fn secret_keys_from_nix_key_generate_secret() {
    if !require_nix("secret_keys_from_nix_key_generate_secret") {
        return;
    }
    let dir = ScratchDir::new("keys");
    for name in ["cache.example.org-1", "alice"] {
        let secret = nix_ok(&["key", "generate-secret", "--key-name", name]);
        let file = dir.join(name);
        fs::write(&file, &secret).expect("writing the key file");
        let public = expect_success(
            &run_bounded(
                // The kit runs commands with stdin closed: a shell redirects the key in.
                nix_command("sh")
                    .args(["-c", "exec nix key convert-secret-to-public < \"$1\"", "sh"])
                    .arg(&file),
                NIX_COMMAND_TIMEOUT,
                "nix key convert-secret-to-public",
            ),
            "nix key convert-secret-to-public",
        );
        let key = SecretKey::parse(&secret).expect("our parser reads Nix's secret key");
        assert_eq!(key.name(), name);
        assert_eq!(key.to_nix_string(), secret.trim_end());
        assert_eq!(key.public().to_string(), public.trim_end());
        assert_eq!(PublicKey::parse(&public), Ok(key.public()));
    }
}

/// A chroot source store holding a closure of three text paths: `c` refers to `a` and `b`,
/// `b` to `a`. Returns the store and the paths `[a, b, c]`.
fn closure_of_three(source: &SourceStore) -> [String; 3] {
    let a = source.add_text_with_references("dep-a", "leaf", &[]);
    let b = source.add_text_with_references("dep-b", "middle", &[&a]);
    let c = source.add_text_with_references("top", "top \"$x\" \\", &[&b, &a]);
    [a, b, c]
}

/// A Nix key made by `nix key generate-secret`, written to `dir/name.sec`.
fn nix_secret_key_file(dir: &ScratchDir, name: &str) -> (std::path::PathBuf, String) {
    let secret = nix_ok(&["key", "generate-secret", "--key-name", name]);
    let file = dir.join(&format!("{name}.sec"));
    fs::write(&file, &secret).expect("writing the key file");
    (file, secret)
}

/// Our fingerprint of a path from what `nix path-info` says about it.
fn fingerprint_of(dir: &StoreDir, path: &str, meta: &PathMetadata) -> String {
    let references: Vec<StorePath> = meta
        .references
        .iter()
        .map(|r| dir.parse_path(r).expect("Nix's reference parses"))
        .collect();
    n2p_nix::signature::fingerprint(
        dir,
        &dir.parse_path(path).expect("Nix's path parses"),
        &meta.nar_hash.parse().expect("Nix's SRI hash parses"),
        meta.nar_size,
        &references,
    )
}

#[test]
fn signatures_match_nix_store_sign() {
    if !require_nix("signatures_match_nix_store_sign") {
        return;
    }
    let source = SourceStore::new();
    let paths = closure_of_three(&source);
    let keys = ScratchDir::new("sign");
    let (key_file, secret) = nix_secret_key_file(&keys, "n2p-sign-test-1");
    let key_file = key_file.to_str().expect("utf-8 path");
    let url = source.url();
    let mut args = vec!["store", "sign", "--store", &url, "--key-file", key_file];
    args.extend(paths.iter().map(String::as_str));
    nix_ok(&args);

    let dir = StoreDir::default();
    let ours = SecretKey::parse(&secret).expect("parses");
    let public = ours.public();
    for path in &paths {
        let meta = path_metadata(&source.url(), path).expect("valid in the source");
        let [sig] = meta.signatures.as_slice() else {
            panic!("{path}: expected one signature, got {:?}", meta.signatures);
        };
        let fingerprint = fingerprint_of(&dir, path, &meta);
        let nix_sig = Signature::parse(sig).expect("Nix's signature parses");
        assert!(
            public.verify(&fingerprint, &nix_sig),
            "Nix's signature of {path} does not verify over our fingerprint {fingerprint}"
        );
        // ed25519 is deterministic: our key signs our fingerprint to Nix's exact bytes.
        assert_eq!(ours.sign(&fingerprint).to_string(), *sig, "{path}");
        // A different size (or anything else) is not what Nix signed.
        let mut other = meta.clone();
        other.nar_size += 1;
        assert!(!public.verify(&fingerprint_of(&dir, path, &other), &nix_sig));
    }
    let top = path_metadata(&source.url(), &paths[2]).expect("valid");
    assert_eq!(top.references.len(), 2, "c refers to a and b: {top:?}");
}

/// Every `*.narinfo` in `cache`, by file name.
fn narinfo_files(cache: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = fs::read_dir(cache)
        .expect("reading the cache")
        .map(|entry| entry.expect("cache entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "narinfo"))
        .map(|path| {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, fs::read_to_string(&path).expect("reading a narinfo"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn parses_every_narinfo_nix_copy_writes() {
    if !require_nix("parses_every_narinfo_nix_copy_writes") {
        return;
    }
    let source = SourceStore::new();
    let mut paths = closure_of_three(&source).to_vec();
    paths.push(source.add_random_file("blob", 10_000, 3));
    paths.push(source.add_tree("tree", 5));
    let keys = ScratchDir::new("narinfo-keys");
    let (key_file, secret) = nix_secret_key_file(&keys, "n2p-narinfo-test-1");
    let key = SecretKey::parse(&secret).expect("parses");
    let url = source.url();
    let mut sign = vec!["store", "sign", "--store", &url, "--key-file"];
    let key_file = key_file.to_str().expect("utf-8 path");
    sign.push(key_file);
    sign.extend(paths[1..].iter().map(String::as_str)); // `a` stays unsigned
    nix_ok(&sign);

    let cache = ScratchDir::new("nix-written-cache");
    let to = format!("file://{}?compression=none", cache.path().display());
    let mut copy = vec!["copy", "--from", &url, "--to", &to];
    copy.extend(paths.iter().map(String::as_str));
    nix_ok(&copy);

    let dir = StoreDir::default();
    let files = narinfo_files(cache.path());
    assert_eq!(files.len(), paths.len(), "{files:?}");
    for (name, text) in &files {
        let info = NarInfo::parse(text, &dir).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        let full = dir.display(&info.store_path);
        assert_eq!(name, &format!("{}.narinfo", info.store_path.hash_part()));
        let meta = path_metadata(&url, &full).expect("valid in the source");
        assert_eq!(info.nar_hash.to_sri(), meta.nar_hash, "{name}");
        assert_eq!(info.nar_size, meta.nar_size, "{name}");
        let references: BTreeSet<String> = info.references.iter().map(|r| dir.display(r)).collect();
        assert_eq!(
            references,
            meta.references.iter().cloned().collect(),
            "{name}"
        );
        let sigs: Vec<String> = info.sigs.iter().map(Signature::to_string).collect();
        assert_eq!(sigs, meta.signatures, "{name}");
        assert_eq!(info.ca, meta.ca, "{name}");
        assert_eq!(
            info.signed_by_any(&dir, &[key.public()]),
            full != paths[0],
            "{name}"
        );
        assert!(info.url.starts_with("nar/"), "{name}: {}", info.url);
        // The NAR is where the URL says, with the announced hash.
        let nar = fs::read(cache.join(&info.url)).expect("the NAR is in the cache");
        assert_eq!(NarHash::of(&nar), info.nar_hash, "{name}");
        // We write what Nix writes, less the optional FileHash/FileSize.
        let nix_lines: String = text
            .lines()
            .filter(|line| !line.starts_with("FileHash: ") && !line.starts_with("FileSize: "))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(info.render(&dir), nix_lines, "{name}");
    }
}

/// A file:// binary cache in `cache` holding `paths` from `source`, with narinfos we
/// render (signed by `key`, no CA, so Nix must check the signature) and NARs from
/// `nix store dump-path`.
fn publish(cache: &Path, source: &SourceStore, paths: &[String], key: &SecretKey) {
    let dir = StoreDir::default();
    fs::create_dir_all(cache.join("nar")).expect("creating nar/");
    fs::write(
        cache.join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\n",
    )
    .expect("writing nix-cache-info");
    for path in paths {
        let meta = path_metadata(&source.url(), path).expect("valid in the source");
        let dump = run_bounded(
            nix_command("nix").args(["store", "dump-path", "--store", &source.url(), path]),
            NIX_COMMAND_TIMEOUT,
            "nix store dump-path",
        );
        expect_success(&dump, "nix store dump-path");
        let nar_hash = NarHash::of(&dump.stdout);
        assert_eq!(nar_hash.to_sri(), meta.nar_hash, "dump of {path}");
        let url = format!("nar/{}.nar", nar_hash.nix32_digest());
        fs::write(cache.join(&url), &dump.stdout).expect("writing a NAR");
        let store_path = dir.parse_path(path).expect("parses");
        let mut info = NarInfo {
            url,
            nar_hash,
            nar_size: dump.stdout.len() as u64,
            references: meta
                .references
                .iter()
                .map(|r| dir.parse_path(r).expect("parses"))
                .collect(),
            deriver: None,
            sigs: vec![],
            ca: None,
            store_path,
        };
        info.sign(&dir, key);
        let file = cache.join(format!("{}.narinfo", info.store_path.hash_part()));
        fs::write(file, info.render(&dir)).expect("writing a narinfo");
    }
}

/// `nix copy --from file://<cache> --to <to> <path>` trusting only `trusted`.
fn copy_from_cache(cache: &Path, to: &str, path: &str, trusted: &PublicKey) -> Output {
    let from = format!("file://{}", cache.display());
    let trusted = trusted.to_string();
    run_bounded(
        nix_command("nix").args([
            "copy",
            "--option",
            "trusted-public-keys",
            &trusted,
            "--from",
            &from,
            "--to",
            to,
            path,
        ]),
        NIX_COMMAND_TIMEOUT,
        &format!("nix copy --from {from} --to {to}"),
    )
}

#[test]
fn nix_copy_accepts_our_narinfos_only_with_our_key_trusted() {
    if !require_nix("nix_copy_accepts_our_narinfos_only_with_our_key_trusted") {
        return;
    }
    let source = SourceStore::new();
    let paths = closure_of_three(&source);
    let key = SecretKey::from_seed("n2p-publish-test-1", [5; 32]);
    let cache = ScratchDir::new("our-cache");
    publish(cache.path(), &source, &paths, &key);
    let top = &paths[2];

    // Signed by a key the destination does not trust: refused, nothing arrives.
    let refusing = ScratchDir::new("refusing-store");
    let refusing_url = format!("local?root={}", refusing.join("store").display());
    let stranger = SecretKey::from_seed("n2p-publish-test-1", [6; 32]).public();
    let output = copy_from_cache(cache.path(), &refusing_url, top, &stranger);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "untrusted copy succeeded: {stderr}"
    );
    assert!(
        stderr.contains("signature"),
        "refused for another reason: {stderr}"
    );
    for path in &paths {
        assert_not_valid(&refusing_url, path);
    }

    // Our key trusted: the closure arrives with the source's NAR hashes and references.
    let accepting = ScratchDir::new("accepting-store");
    let accepting_url = format!("local?root={}", accepting.join("store").display());
    let output = copy_from_cache(cache.path(), &accepting_url, top, &key.public());
    expect_success(&output, "nix copy --from our cache");
    for path in &paths {
        let want = path_metadata(&source.url(), path).expect("valid in the source");
        let got = path_metadata(&accepting_url, path).expect("arrived");
        assert_eq!(got.nar_hash, want.nar_hash, "{path}");
        assert_eq!(got.nar_size, want.nar_size, "{path}");
        assert_eq!(got.references, want.references, "{path}");
        let ours = key
            .sign(&fingerprint_of(&StoreDir::default(), path, &want))
            .to_string();
        assert_eq!(got.signatures, vec![ours], "{path}");
    }
}
