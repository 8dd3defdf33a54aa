//! The `custody` binary's offline commands.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn custody(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_custody"))
        .args(args)
        .output()
        .expect("run custody")
}

#[test]
fn key_new_prints_the_did_and_writes_0600() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("me.key");
    let o = custody(&["key", "new", "--out", p.to_str().unwrap()]);
    assert!(o.status.success());
    let did = String::from_utf8(o.stdout).unwrap();
    assert!(did.trim().starts_with("did:key:z6Mk"), "{did}");
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key = custody_identity::KeyPair::load(&p).unwrap();
    assert_eq!(key.did().as_str(), did.trim());
    // Never overwrites a key.
    let o = custody(&["key", "new", "--out", p.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to overwrite"));
}

#[test]
fn demo_writes_a_verified_bundle_and_refuses_a_used_directory() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("demo");
    let o = custody(&["demo", "--out", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("result VALID"), "{text}");
    assert!(out.join("bundle/entries.jsonl").is_file());
    let o = custody(&["demo", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
}
