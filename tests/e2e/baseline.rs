//! The harness on its own, without n2p: `nix copy` straight into a daemon's socket. If this
//! fails, the other tests' failures say nothing about n2p.

use n2p_testkit::nix::{
    NixDaemon, SourceStore, assert_copied, assert_copy_succeeds, assert_not_valid, require_nix,
};

#[test]
fn nix_copy_straight_to_a_daemon_socket() {
    if !require_nix("nix_copy_straight_to_a_daemon_socket") {
        return;
    }
    let daemon = NixDaemon::start();
    let source = SourceStore::new();
    let file = source.add_file("hello.txt", b"hello from the source store\n");
    let tree = source.add_tree("tree", 20);

    for path in [&file, &tree] {
        assert_not_valid(&daemon.store_url(), path);
    }
    assert_copy_succeeds(&source, &daemon.store_url(), &[&file, &tree]);
    for path in [&file, &tree] {
        assert_copied(&source, &daemon.store_url(), path);
    }
    assert!(daemon.socket_path().exists());
}
