//! `custody git install` against a live broker and real git: commits made in
//! a session carry the session's trailers and are recorded (`git.commit_intent`
//! then `git.commit` with the commit hash), other commits are untouched, a
//! session the broker refuses does not block commits unless required, and an
//! existing foreign hook is not overwritten without `--force`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use custody_tests::broker::Harness;
use serde_json::Value;

/// git with no user or system config, and no session unless given.
fn git_cmd(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args(args);
    isolate(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run git")
}

fn isolate(cmd: &mut Command) {
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("CUSTODY_SESSION")
        .env_remove("CUSTODY_GIT_REQUIRE")
        .env_remove("GIT_DIR")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_WORK_TREE");
}

fn git_ok(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let o = git_cmd(dir, args, env);
    assert!(
        o.status.success(),
        "git {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim_end().to_string()
}

fn custody_git(args: &[&str]) -> Output {
    let mut cmd = Command::new(custody_tests::bin("custody"));
    cmd.arg("git").args(args);
    isolate(&mut cmd);
    cmd.output().expect("run custody")
}

fn new_repo(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    git_ok(&dir, &["init", "-q", "-b", "main"], &[]);
    git_ok(&dir, &["config", "user.name", "Dev Eloper"], &[]);
    git_ok(&dir, &["config", "user.email", "dev@example.com"], &[]);
    dir
}

/// Writes a file and commits everything with `message`.
fn commit(dir: &Path, file: &str, message: &str, env: &[(&str, &str)]) -> Output {
    std::fs::write(dir.join(file), format!("{file} {message}\n")).unwrap();
    git_ok(dir, &["add", "-A"], &[]);
    git_cmd(dir, &["commit", "-q", "-m", message], env)
}

/// HEAD's trailers as (key, value) pairs.
fn trailers(dir: &Path) -> Vec<(String, String)> {
    let msg = git_ok(dir, &["log", "-1", "--format=%B"], &[]);
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(["interpret-trailers", "--parse"]);
    isolate(&mut cmd);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), msg.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn trailer<'a>(t: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    t.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The entries of an exported bundle as JSON.
fn entries(bundle: &Path) -> Vec<Value> {
    std::fs::read_to_string(bundle.join("entries.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn by_action<'a>(entries: &'a [Value], action: &str) -> Vec<&'a Value> {
    entries
        .iter()
        .filter(|e| e["event"]["action"] == action)
        .collect()
}

/// Checks that HEAD of `dir` carries exactly one pair of trailers for `did`,
/// and returns (commit sha, Custody-Entry seq).
fn bound_head(dir: &Path, did: &str) -> (String, u64) {
    let t = trailers(dir);
    assert_eq!(trailer(&t, "Custody-Session"), vec![did], "{t:?}");
    let seqs = trailer(&t, "Custody-Entry");
    assert_eq!(seqs.len(), 1, "{t:?}");
    let seq: u64 = seqs[0].parse().unwrap();
    (git_ok(dir, &["rev-parse", "HEAD"], &[]), seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_in_a_session_carry_trailers_and_are_recorded() {
    let mut h = Harness::start().await;
    let c = h.client();
    let (s, sf) = h.session("claude-code", "ide", "session").await;
    let did = s.did.as_str().to_string();
    let sfs = sf.to_str().unwrap();
    let in_session = [("CUSTODY_SESSION", sfs)];

    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path(), "webapp");
    let o = custody_git(&["install", "--repo", repo.to_str().unwrap()]);
    assert!(o.status.success(), "install: {}", stderr(&o));
    for hook in [
        "prepare-commit-msg",
        "commit-msg",
        "post-commit",
        "post-merge",
    ] {
        let p = repo.join(".git/hooks").join(hook);
        let mode = std::os::unix::fs::PermissionsExt::mode(&p.metadata().unwrap().permissions());
        assert!(mode & 0o111 != 0, "{hook} is executable");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains(custody_tests::bin("custody").to_str().unwrap()),
            "{hook} calls the custody binary by absolute path"
        );
    }

    // 1. A commit in the session: trailers, intent and commit recorded.
    let secret_line = "body line that must stay out of the chain";
    let o = commit(
        &repo,
        "a.txt",
        &format!("Add feature\n\n{secret_line}\n\nSigned-off-by: Dev Eloper <dev@example.com>"),
        &in_session,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("custody"),
        "no warning: {}",
        stderr(&o)
    );
    let (sha1, intent1) = bound_head(&repo, &did);
    let t = trailers(&repo);
    assert_eq!(
        trailer(&t, "Signed-off-by"),
        vec!["Dev Eloper <dev@example.com>"],
        "existing trailers kept"
    );
    let tree1 = git_ok(&repo, &["rev-parse", "HEAD^{tree}"], &[]);

    // 2. A commit outside any session is untouched.
    let o = commit(&repo, "b.txt", "Human change", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let human_sha = git_ok(&repo, &["rev-parse", "HEAD"], &[]);
    assert!(
        !git_ok(&repo, &["log", "-1", "--format=%B"], &[]).contains("Custody-"),
        "no trailers outside a session"
    );

    // 3. Amending in the session: one pair of trailers, a new intent.
    let o = commit(&repo, "c.txt", "Agent change", &in_session);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, first_intent) = bound_head(&repo, &did);
    let o = git_cmd(
        &repo,
        &["commit", "-q", "--amend", "--no-edit"],
        &in_session,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (sha3, intent3) = bound_head(&repo, &did);
    assert!(
        intent3 > first_intent,
        "a new intent for the amended commit"
    );

    // 4. A merge commit made in the session (post-merge); a fast-forward adds nothing.
    git_ok(&repo, &["checkout", "-q", "-b", "topic", "HEAD~1"], &[]);
    assert!(commit(&repo, "d.txt", "Topic work", &[]).status.success());
    git_ok(&repo, &["checkout", "-q", "main"], &[]);
    let o = git_cmd(
        &repo,
        &["merge", "-q", "--no-ff", "-m", "Merge topic", "topic"],
        &in_session,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("custody"),
        "no warning: {}",
        stderr(&o)
    );
    let (merge_sha, merge_intent) = bound_head(&repo, &did);
    git_ok(&repo, &["checkout", "-q", "topic"], &[]);
    let o = git_cmd(&repo, &["merge", "-q", "--ff-only", "main"], &in_session);
    assert!(o.status.success(), "{}", stderr(&o));
    git_ok(&repo, &["checkout", "-q", "main"], &[]);

    // 5. An editor left empty still aborts the commit.
    std::fs::write(repo.join("e.txt"), "e\n").unwrap();
    git_ok(&repo, &["add", "-A"], &[]);
    let o = git_cmd(
        &repo,
        &["commit", "-q"],
        &[("CUSTODY_SESSION", sfs), ("GIT_EDITOR", "true")],
    );
    assert!(!o.status.success(), "an empty message aborts the commit");
    assert!(
        stderr(&o).contains("empty commit message"),
        "{}",
        stderr(&o)
    );
    assert_eq!(git_ok(&repo, &["rev-parse", "HEAD"], &[]), merge_sha);
    git_ok(&repo, &["reset", "-q", "--hard"], &[]);

    // 6. --session at install: every commit in that repository is bound.
    let repo2 = new_repo(work.path(), "infra");
    let o = custody_git(&[
        "install",
        "--repo",
        repo2.to_str().unwrap(),
        "--session",
        sfs,
    ]);
    assert!(o.status.success(), "install --session: {}", stderr(&o));
    let o = commit(&repo2, "main.tf", "Terraform change", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (sha_infra, _) = bound_head(&repo2, &did);

    // The ledger.
    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
    let es = entries(&h.path().join("bundle"));
    let intents = by_action(&es, "git.commit_intent");
    let commits = by_action(&es, "git.commit");
    // Intents: feature, agent change, its amend, merge, the aborted one, infra.
    assert_eq!(intents.len(), 6, "{intents:#?}");
    assert_eq!(commits.len(), 5, "{commits:#?}");
    for e in intents.iter().chain(&commits) {
        assert_eq!(e["event"]["actor"], did.as_str());
        assert_eq!(e["event"]["actor_kind"], "agent");
        assert_eq!(e["event"]["details"]["agent"], "claude-code");
    }
    let intent = intents
        .iter()
        .find(|e| e["seq"] == intent1)
        .expect("the intent named by Custody-Entry");
    assert_eq!(intent["event"]["details"]["repo"], "webapp");
    assert_eq!(intent["event"]["details"]["branch"], "main");
    assert_eq!(intent["event"]["details"]["tree"], tree1.as_str());

    let recorded = |sha: &str| {
        commits
            .iter()
            .find(|e| e["event"]["details"]["commit"] == sha)
            .unwrap_or_else(|| panic!("git.commit for {sha}"))
    };
    let first = recorded(&sha1);
    let d = &first["event"]["details"];
    assert_eq!(d["intent_seq"], intent1);
    assert_eq!(d["repo"], "webapp");
    assert_eq!(d["branch"], "main");
    assert_eq!(d["tree"], tree1.as_str());
    assert_eq!(sha1.len(), 40);
    assert!(
        first["event"]["payload"]["digest"].is_string(),
        "the message is a salted digest: {first}"
    );
    assert!(first["seq"].as_u64().unwrap() > intent1);
    assert_eq!(recorded(&sha3)["event"]["details"]["intent_seq"], intent3);
    assert_eq!(
        recorded(&merge_sha)["event"]["details"]["intent_seq"],
        merge_intent
    );
    assert_eq!(recorded(&sha_infra)["event"]["details"]["repo"], "infra");
    assert!(
        !commits
            .iter()
            .any(|e| e["event"]["details"]["commit"] == human_sha.as_str()),
        "the human's commit is not recorded"
    );
    let text = std::fs::read_to_string(h.path().join("bundle/entries.jsonl")).unwrap();
    assert!(
        !text.contains(secret_line),
        "commit messages stay out of the chain"
    );
    // The report lists the agent's commits, and only those.
    let report = h.path().join("report.json");
    let o = std::process::Command::new(custody_tests::bin("custody-verify"))
        .arg("report")
        .arg(h.path().join("bundle"))
        .arg("--out")
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let listed: Vec<&str> = r["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["commit"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 5, "{listed:?}");
    for sha in [&sha1, &sha3, &merge_sha, &sha_infra] {
        assert!(listed.contains(&sha.as_str()), "{sha} in the report");
    }
    assert!(!listed.contains(&human_sha.as_str()));
    assert!(r["commits"][0]["agent"] == "claude-code");

    // 7. A revoked session does not block commits by default: a warning, no trailers.
    c.revoke(&h.admin, &s.did, "done").await.unwrap();
    let o = commit(&repo, "f.txt", "After revocation", &in_session);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("custody: warning"), "{}", stderr(&o));
    assert!(stderr(&o).contains("not recorded"), "{}", stderr(&o));
    assert!(!git_ok(&repo, &["log", "-1", "--format=%B"], &[]).contains("Custody-"));
    // ... and with CUSTODY_GIT_REQUIRE=1 the commit is refused.
    let head = git_ok(&repo, &["rev-parse", "HEAD"], &[]);
    let o = commit(
        &repo,
        "g.txt",
        "Required",
        &[("CUSTODY_SESSION", sfs), ("CUSTODY_GIT_REQUIRE", "1")],
    );
    assert!(!o.status.success(), "refused: {}", stderr(&o));
    assert!(
        stderr(&o).contains("CUSTODY_GIT_REQUIRE=1"),
        "{}",
        stderr(&o)
    );
    assert_eq!(git_ok(&repo, &["rev-parse", "HEAD"], &[]), head);

    // 8. The broker unreachable: the same, with the reason.
    h.broker.take().unwrap().stop();
    let o = commit(&repo, "g.txt", "Broker down", &in_session);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot reach the broker"),
        "{}",
        stderr(&o)
    );
    assert!(!git_ok(&repo, &["log", "-1", "--format=%B"], &[]).contains("Custody-"));
}

#[test]
fn install_refuses_a_foreign_hook_without_force() {
    let work = tempfile::tempdir().unwrap();
    let repo = new_repo(work.path(), "app");
    let hooks = repo.join(".git/hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let foreign = "#!/bin/sh\n# the team's own hook\nexit 0\n";
    std::fs::write(hooks.join("post-commit"), foreign).unwrap();

    let o = custody_git(&["install", "--repo", repo.to_str().unwrap()]);
    assert!(!o.status.success(), "refused");
    let err = stderr(&o);
    assert!(err.contains("not written by custody"), "{err}");
    assert!(err.contains("post-commit"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read_to_string(hooks.join("post-commit")).unwrap(),
        foreign
    );
    assert!(
        !hooks.join("prepare-commit-msg").exists(),
        "nothing was changed"
    );

    let o = custody_git(&["install", "--repo", repo.to_str().unwrap(), "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("post-commit.pre-custody"));
    assert_eq!(
        std::fs::read_to_string(hooks.join("post-commit.pre-custody")).unwrap(),
        foreign,
        "the foreign hook is kept"
    );
    assert!(std::fs::read_to_string(hooks.join("post-commit"))
        .unwrap()
        .contains("custody-git-hook"));

    // Reinstalling over custody's own hooks needs no --force.
    let o = custody_git(&["install", "--repo", repo.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Not a repository: a clear error.
    let o = custody_git(&["install", "--repo", work.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not inside a git work tree"),
        "{}",
        stderr(&o)
    );
}
