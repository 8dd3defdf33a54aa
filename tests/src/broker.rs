//! A real OpenBao dev server and a real `custody serve` process for tests.
//! Both are started on free loopback ports and killed by their own PIDs when
//! dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use custody_agent::client::Client;
use custody_cli::dev::{example_config, free_port, write_secret_file, OpenBao};
use custody_identity::KeyPair;

/// OpenBao + broker + the keys the config trusts.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub bao: OpenBao,
    pub broker: Option<BrokerProcess>,
    pub developer: KeyPair,
    pub admin: KeyPair,
    /// A listed automated reviewer (`[trust] reviewers`), `reviewer.key`.
    pub reviewer: KeyPair,
    /// Listed in `[trust] auditors`: may read the entry feed, nothing else.
    pub auditor: KeyPair,
    pub url: String,
}

pub struct BrokerProcess {
    child: Child,
    pub ledger: String,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BrokerProcess {
    /// The process id (to read its memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait: the broker's graceful shutdown.
    pub fn stop(mut self) {
        let pid = self.child.id() as i32;
        // kill(1), because the standard library can only send SIGKILL.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let _ = self.child.wait();
    }

    /// SIGKILL: no chance to flush anything.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// Starts with `extra` appended to the example config (e.g. a `[tls]` table).
    pub async fn start_with(extra: &str) -> Self {
        let mut h = Self::prepare(extra).await;
        h.start_broker();
        h
    }

    /// Like [`Harness::start_with`] but without starting the broker, so a test
    /// can prepare the data directory ([`Harness::data`], e.g. mount a small
    /// file system there) before calling [`Harness::start_broker`].
    pub async fn prepare(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bao = OpenBao::start(dir.path())
            .await
            .expect("OpenBao dev server");
        let token = bao.configure_examples().await.expect("configure OpenBao");
        write_secret_file(&dir.path().join("vault-token"), &token).unwrap();
        let developer = KeyPair::generate();
        let admin = KeyPair::generate();
        let reviewer = KeyPair::generate();
        developer.save(&dir.path().join("developer.key")).unwrap();
        admin.save(&dir.path().join("admin.key")).unwrap();
        reviewer.save(&dir.path().join("reviewer.key")).unwrap();
        let auditor = KeyPair::generate();
        auditor.save(&dir.path().join("auditor.key")).unwrap();
        let port = free_port().unwrap();
        let scheme = if extra.contains("enabled = true") {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://localhost:{port}");
        let config = custody_cli::dev::with_trust(
            &custody_cli::dev::with_trust(
                &example_config(
                    &format!("127.0.0.1:{port}"),
                    &dir.path().join("data"),
                    &bao.addr,
                    &dir.path().join("vault-token"),
                    admin.did().as_str(),
                    developer.did().as_str(),
                ),
                "reviewers",
                &[reviewer.did().as_str()],
            ),
            "auditors",
            &[auditor.did().as_str()],
        ) + extra;
        std::fs::write(dir.path().join("custody.toml"), config).unwrap();
        Self {
            dir,
            bao,
            broker: None,
            developer,
            admin,
            reviewer,
            auditor,
            url,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's data directory (`data` in the config).
    pub fn data(&self) -> PathBuf {
        self.path().join("data")
    }

    pub fn config(&self) -> PathBuf {
        self.path().join("custody.toml")
    }

    /// Starts `custody serve` and waits for its "listening" line.
    pub fn start_broker(&mut self) {
        let mut child = Command::new(crate::bin("custody"))
            .arg("serve")
            .arg("--config")
            .arg(self.config())
            .env("CUSTODY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(self.log_file())
            .spawn()
            .expect("spawn custody serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        if !line.contains("listening") {
            let _ = child.wait();
            let log = std::fs::read_to_string(self.path().join("broker.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "custody serve said: {line}\nend of broker.log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let ledger = line
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string();
        self.broker = Some(BrokerProcess { child, ledger });
    }

    /// The broker's log (stderr), appended across restarts.
    fn log_file(&self) -> Stdio {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("broker.log"))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::inherit())
    }

    /// Starts a session by the developer for `agent` in `context` (scope
    /// `repo-read`, 10 minutes) and saves its file as `<name>.json`.
    pub async fn session(
        &self,
        agent: &str,
        context: &str,
        name: &str,
    ) -> (custody_agent::sessionfile::SessionFile, PathBuf) {
        let (s, _) = self
            .client()
            .start_session(
                &self.developer,
                agent,
                &["repo-read".to_string()],
                context,
                Duration::from_secs(600),
            )
            .await
            .expect("start a session");
        let path = self.path().join(format!("{name}.json"));
        s.save(&path).expect("save the session file");
        (s, path)
    }

    pub fn client(&self) -> Client {
        let ca = std::fs::read_to_string(self.path().join("data/ca.pem")).ok();
        Client::new(&self.url, ca.as_deref()).unwrap()
    }

    /// Runs the `custody` binary with arguments.
    pub fn custody(&self, args: &[&str]) -> std::process::Output {
        Command::new(crate::bin("custody"))
            .args(args)
            .output()
            .expect("run custody")
    }

    /// Exports through the broker and verifies offline, pinned to the ledger key.
    pub async fn export_and_verify(&self, name: &str) -> (i32, serde_json::Value) {
        let out = self.path().join(name);
        self.client()
            .export(&self.admin, &out)
            .await
            .expect("export");
        crate::verify_json(&out)
    }
}

/// Waits a little for something asynchronous (e.g. a port to free up).
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}
