//! Several brokers on one PostgreSQL ledger: a real PostgreSQL cluster of
//! the test's own (`custody_cli::pgcluster`), a real OpenBao dev server, and
//! N real `custody serve` processes on loopback, each with its own data
//! directory holding only its keys. All of it is killed by PID when dropped.
//!
//! Every broker of a ledger holds the same ledger key and session CA (they
//! are provisioned like the config, docs/DEPLOYMENT.md): broker 0 creates
//! them on its first start, the others get copies.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use custody_agent::client::Client;
use custody_agent::sessionfile::SessionFile;
use custody_cli::dev::{example_config, free_port, postgres_config, write_secret_file, OpenBao};
use custody_cli::pgcluster::PgCluster;
use custody_identity::KeyPair;

/// The per-DID rate limit is not under test here.
pub const LIMITS: &str = "\n[limits]\nrequests_per_second = 100000\n";

pub struct Broker {
    child: Child,
    pub url: String,
}

impl Broker {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub bao: OpenBao,
    pub pg: PgCluster,
    /// A standby, when [`Cluster::with_standby`] made one.
    pub standby: Option<PgCluster>,
    pub brokers: Vec<Option<Broker>>,
    ports: Vec<u16>,
    pub developer: KeyPair,
    pub admin: KeyPair,
    extra: String,
}

impl Cluster {
    /// PostgreSQL, OpenBao and `n` brokers, all started.
    pub async fn start(n: usize) -> Self {
        let mut c = Self::prepare(n, LIMITS, false).await;
        c.start_all();
        c
    }

    /// Like [`Cluster::start`] with a synchronous standby made by
    /// `pg_basebackup`, and brokers whose URL names both servers
    /// (`target_session_attrs=read-write`), so they follow a promotion.
    pub async fn with_standby(n: usize) -> Self {
        let mut c = Self::prepare(n, LIMITS, true).await;
        c.start_all();
        c
    }

    /// Everything but the brokers.
    pub async fn prepare(n: usize, extra: &str, standby: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = PgCluster::start(dir.path(), "pg-primary")
            .await
            .expect("a PostgreSQL cluster (scripts/setup installs Debian's postgresql)");
        let standby = if standby {
            let s = pg
                .standby(dir.path(), "pg-standby")
                .await
                .expect("a standby");
            pg.require_synchronous_standby()
                .await
                .expect("synchronous replication");
            Some(s)
        } else {
            None
        };
        let url = match &standby {
            Some(s) => pg.failover_url(s),
            None => pg.url(),
        };
        write_secret_file(&dir.path().join("pg-url"), &url).unwrap();
        let bao = OpenBao::start(dir.path())
            .await
            .expect("OpenBao dev server");
        let token = bao.configure_examples().await.expect("configure OpenBao");
        write_secret_file(&dir.path().join("vault-token"), &token).unwrap();
        let developer = KeyPair::generate();
        let admin = KeyPair::generate();
        developer.save(&dir.path().join("developer.key")).unwrap();
        admin.save(&dir.path().join("admin.key")).unwrap();
        let ports = (0..n).map(|_| free_port().unwrap()).collect();
        let c = Self {
            dir,
            bao,
            pg,
            standby,
            brokers: (0..n).map(|_| None).collect(),
            ports,
            developer,
            admin,
            extra: extra.to_string(),
        };
        for i in 0..n {
            c.write_config(i);
        }
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data(&self, i: usize) -> PathBuf {
        self.path().join(format!("data-{i}"))
    }

    pub fn config(&self, i: usize) -> PathBuf {
        self.path().join(format!("custody-{i}.toml"))
    }

    pub fn log(&self, i: usize) -> PathBuf {
        self.path().join(format!("broker-{i}.log"))
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn write_config(&self, i: usize) {
        let config = example_config(
            &format!("127.0.0.1:{}", self.ports[i]),
            &self.data(i),
            &self.bao.addr,
            &self.path().join("vault-token"),
            self.admin.did().as_str(),
            self.developer.did().as_str(),
        ) + &postgres_config(&self.path().join("pg-url"))
            + &self.extra;
        std::fs::write(self.config(i), config).unwrap();
    }

    /// Broker 0 first (it creates the ledger key, the CA and the genesis
    /// entry), then the others with copies of its keys.
    pub fn start_all(&mut self) {
        for i in 0..self.brokers.len() {
            self.start_broker(i);
        }
    }

    /// Starts broker `i` and waits for its "listening" line.
    pub fn start_broker(&mut self, i: usize) {
        if i > 0 && !self.data(i).join("ledger.key").exists() {
            std::fs::create_dir_all(self.data(i)).unwrap();
            for f in ["ledger.key", "ca.key", "ca.pem"] {
                std::fs::copy(self.data(0).join(f), self.data(i).join(f)).unwrap();
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))
            .unwrap();
        let mut child = Command::new(crate::bin("custody"))
            .arg("serve")
            .arg("--config")
            .arg(self.config(i))
            .env("CUSTODY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn custody serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        if !line.contains("listening") {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(self.log(i)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "broker {i} said: {line}\nend of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.brokers[i] = Some(Broker {
            child,
            url: self.url(i),
        });
    }

    /// SIGKILL of broker `i` (it forks nothing).
    pub fn kill_broker(&mut self, i: usize) {
        if let Some(mut b) = self.brokers[i].take() {
            let _ = b.child.kill();
            let _ = b.child.wait();
        }
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn stop_broker(&mut self, i: usize) {
        if let Some(mut b) = self.brokers[i].take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(b.child.id().to_string())
                .status();
            let _ = b.child.wait();
        }
    }

    pub fn client(&self, i: usize) -> Client {
        Client::new(&self.url(i), None).unwrap()
    }

    /// Starts a session by the developer on broker `i` (scope `repo-read`,
    /// `ci-read`, ten minutes: within both scopes' `max_ttl`).
    pub async fn session(&self, i: usize, context: &str) -> SessionFile {
        let (s, _) = self
            .client(i)
            .start_session(
                &self.developer,
                "claude-code",
                &["repo-read".to_string(), "ci-read".to_string()],
                context,
                Duration::from_secs(600),
            )
            .await
            .expect("start a session");
        s
    }

    /// Exports through broker `i` and verifies offline, pinned to the
    /// ledger key.
    pub async fn export_and_verify(&self, i: usize, name: &str) -> (i32, serde_json::Value) {
        let out = self.path().join(name);
        self.client(i)
            .export(&self.admin, &out)
            .await
            .expect("export");
        let ledger = KeyPair::load(&self.data(0).join("ledger.key")).unwrap();
        let o = crate::run(
            "custody-verify",
            &[
                "verify",
                out.to_str().unwrap(),
                "--json",
                "--ledger-key",
                ledger.did().as_str(),
            ],
        );
        let json = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "verify printed no JSON ({e}): {}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (o.status.code().unwrap_or(-1), json)
    }

    /// Every broker log's text, to check what they never print.
    pub fn logs(&self) -> String {
        (0..self.brokers.len())
            .map(|i| std::fs::read_to_string(self.log(i)).unwrap_or_default())
            .collect()
    }
}

/// Waits until `f` holds or `limit` passes (the outcome is what a test
/// asserts, never how long it took).
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = std::time::Instant::now();
    loop {
        if f().await {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
