//! A real PostgreSQL cluster of our own, for `custody dev --postgres`, the
//! tests and the benchmarks: Debian's `postgresql` package (installed by
//! `scripts/setup`), `initdb` into a directory we own, a free loopback port,
//! started directly (so the process we hold is the postmaster) and stopped
//! by its PID. Nothing depends on a server already running.
//!
//! PostgreSQL refuses to run as root. When we are root the cluster runs as
//! an unprivileged user: `$CUSTODY_PG_USER`, else `custody-pg` (which
//! `scripts/setup` creates), else `nobody`; the child switches user itself
//! before exec, so no wrapper process sits between us and the postmaster.
//!
//! The cluster has a superuser (`postgres`) for set-up only, and a role
//! `custody` that owns the `custody` database and is not a superuser: what a
//! broker connects as. Both have random passwords (SCRAM over TCP), so the
//! URLs brokers get carry a password — and the tests check it never shows.
//! Durability settings are the ones the product's promise needs:
//! `fsync=on`, `synchronous_commit=on`, `full_page_writes=on`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::dev::free_port;
use custody_agent::BoxFuture;

/// The newest `…/bin` with `initdb` and `postgres`: `$CUSTODY_PG_BIN`, else
/// `/usr/lib/postgresql/<version>/bin`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("CUSTODY_PG_BIN") {
        let p = PathBuf::from(p);
        if p.join("initdb").is_file() {
            return Ok(p);
        }
        bail!("CUSTODY_PG_BIN={} has no initdb", p.display());
    }
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    if let Ok(items) = fs::read_dir("/usr/lib/postgresql") {
        for item in items.flatten() {
            let bin = item.path().join("bin");
            let version = item.file_name().to_string_lossy().parse::<u32>().ok();
            if let Some(v) = version {
                if bin.join("initdb").is_file() && bin.join("postgres").is_file() {
                    found.push((v, bin));
                }
            }
        }
    }
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .context("PostgreSQL was not found under /usr/lib/postgresql/*/bin: run scripts/setup (it installs Debian's postgresql package), or set CUSTODY_PG_BIN")
}

/// The user the cluster runs as: `None` when we are not root.
fn run_as() -> anyhow::Result<Option<(u32, u32)>> {
    if current_uid()? != 0 {
        return Ok(None);
    }
    let candidates: Vec<String> = match std::env::var("CUSTODY_PG_USER") {
        Ok(u) => vec![u],
        Err(_) => vec!["custody-pg".into(), "nobody".into()],
    };
    for user in &candidates {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").arg(flag).arg(user).output().ok()?;
            if !out.status.success() {
                return None;
            }
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        if let (Some(uid), Some(gid)) = (id("-u"), id("-g")) {
            if uid != 0 {
                return Ok(Some((uid, gid)));
            }
        }
    }
    bail!(
        "running as root, and none of {candidates:?} exists to run PostgreSQL as (scripts/setup creates custody-pg)"
    )
}

fn current_uid() -> anyhow::Result<u32> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn random_hex() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

/// SIGKILL to `pid` and to every process it forked (found in /proc), the
/// parent first so it forks no more.
pub fn kill_tree(pid: u32) {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        if let Ok(items) = fs::read_dir("/proc") {
            for item in items.flatten() {
                let Ok(child) = item.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = fs::read_to_string(item.path().join("stat")).unwrap_or_default();
                // `pid (comm) state ppid …`; comm may hold spaces.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(parent) && !all.contains(&child) {
                    all.push(child);
                }
            }
        }
        i += 1;
    }
    for p in &all {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(p.to_string())
            .stderr(Stdio::null())
            .status();
    }
    // Until they are gone: a restart on the same data directory refuses
    // while a backend of the old server still holds its shared memory.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10)
        && all[1..]
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A PostgreSQL cluster this process started.
pub struct PgCluster {
    bin: PathBuf,
    /// The data directory.
    pub dir: PathBuf,
    pub port: u16,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
    superuser_password: String,
    role_password: String,
    pub log: PathBuf,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCluster")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

/// The role brokers connect as, and its database.
pub const ROLE: &str = "custody";

impl PgCluster {
    /// `initdb` into `parent/name`, start it on a free loopback port, and
    /// create the `custody` role and database.
    pub fn start<'a>(parent: &'a Path, name: &'a str) -> BoxFuture<'a, anyhow::Result<Self>> {
        Box::pin(Self::start_body(parent, name))
    }

    /// [`start`](Self::start)'s body.
    async fn start_body(parent: &Path, name: &str) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let owner = run_as()?;
        let dir = parent.join(name);
        prepare_dir(parent, &dir, owner)?;
        let superuser_password = random_hex();
        let pwfile = parent.join(format!("{name}.pw"));
        fs::write(&pwfile, &superuser_password)?;
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
        }
        let log = parent.join(format!("{name}.log"));
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&dir)
            .args(["-U", "postgres", "-E", "UTF8", "--auth-local=trust"])
            .arg("--auth-host=scram-sha-256")
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("--no-instructions");
        let out = as_owner(&mut initdb, owner)
            .output()
            .with_context(|| format!("running {}", bin.join("initdb").display()))?;
        let _ = fs::remove_file(&pwfile);
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut pg = Self {
            bin,
            dir,
            port: 0,
            owner,
            child: None,
            superuser_password,
            role_password: random_hex(),
            log,
        };
        pg.start_server().await?;
        let role_password = pg.role_password.clone();
        pg.admin_batch(&format!(
            "CREATE ROLE {ROLE} LOGIN PASSWORD '{role_password}' NOSUPERUSER NOCREATEDB NOCREATEROLE"
        ))
        .await?;
        // Alone: CREATE DATABASE refuses to run in a multi-statement batch.
        pg.admin_batch(&format!("CREATE DATABASE {ROLE} OWNER {ROLE}"))
            .await?;
        Ok(pg)
    }

    /// Starts the postmaster on a free port (or the port it had), waits
    /// until it answers.
    async fn start_server(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..5 {
            if self.port == 0 || last.is_some() {
                self.port = free_port()?;
            }
            let out = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .with_context(|| self.log.display().to_string())?;
            let mut cmd = Command::new(self.bin.join("postgres"));
            cmd.arg("-D")
                .arg(&self.dir)
                .arg("-p")
                .arg(self.port.to_string())
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "fsync=on",
                    "-c",
                    "synchronous_commit=on",
                    "-c",
                    "full_page_writes=on",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=128MB",
                ])
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            let child = as_owner(&mut cmd, self.owner)
                .spawn()
                .context("starting postgres")?;
            self.child = Some(child);
            match self.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.kill();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("postgres exited ({status}); see {}", self.log.display());
                }
            }
            if self.admin_batch("SELECT 1").await.is_ok() {
                return Ok(());
            }
            if t0.elapsed() > limit {
                bail!(
                    "postgres did not answer within {limit:?}; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The broker's connection string (role `custody`, with its password).
    pub fn url(&self) -> String {
        format!(
            "postgres://{ROLE}:{}@127.0.0.1:{}/{ROLE}",
            self.role_password, self.port
        )
    }

    /// A URL naming this cluster and `other` (a standby), for whichever
    /// accepts writes: brokers follow a promotion by reconnecting.
    pub fn failover_url(&self, other: &PgCluster) -> String {
        format!(
            "postgres://{ROLE}:{}@127.0.0.1:{},127.0.0.1:{}/{ROLE}?target_session_attrs=read-write",
            self.role_password, self.port, other.port
        )
    }

    /// The role's password (tests check it never shows in logs).
    pub fn password(&self) -> &str {
        &self.role_password
    }

    fn admin_url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{db}",
            self.superuser_password, self.port
        )
    }

    /// Runs SQL as the superuser (set-up, failover).
    pub async fn admin_batch(&self, sql: &str) -> anyhow::Result<()> {
        self.admin_batch_in("postgres", sql).await
    }

    /// A superuser connection to `db`, and the task that drives it (awaited
    /// after the client is dropped, so the session ends before returning).
    async fn admin_connect(
        &self,
        db: &str,
    ) -> anyhow::Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
        let (client, conn) = tokio_postgres::connect(&self.admin_url(db), tokio_postgres::NoTls)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "connecting to postgres on port {}: {}",
                    self.port,
                    pg_error(&e)
                )
            })?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((client, driver))
    }

    /// Runs SQL as the superuser in database `db`.
    pub async fn admin_batch_in(&self, db: &str, sql: &str) -> anyhow::Result<()> {
        let (client, driver) = self.admin_connect(db).await?;
        let r = client.batch_execute(sql).await;
        drop(client);
        let _ = driver.await;
        r.map_err(|e| anyhow::anyhow!("{}", pg_error(&e)))
    }

    /// Runs a query as the superuser in `db` and returns the first column
    /// of each row as text.
    pub async fn admin_query(&self, db: &str, sql: &str) -> anyhow::Result<Vec<String>> {
        let (client, driver) = self.admin_connect(db).await?;
        let rows = client.simple_query(sql).await;
        drop(client);
        let _ = driver.await;
        Ok(rows
            .map_err(|e| anyhow::anyhow!("{}", pg_error(&e)))?
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL of the postmaster and every process it forked.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_tree(c.id());
            let _ = c.wait();
        }
    }

    /// A fast shutdown (SIGINT), waiting for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(c.id().to_string())
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            kill_tree(c.id());
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same directory and port (after
    /// [`kill`](Self::kill) or [`stop`](Self::stop)).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.start_server().await
    }

    /// A streaming standby of this cluster in `parent/name`
    /// (`pg_basebackup -R`), started on its own port.
    pub async fn standby(&self, parent: &Path, name: &str) -> anyhow::Result<PgCluster> {
        let dir = parent.join(name);
        prepare_dir(parent, &dir, self.owner)?;
        let mut cmd = Command::new(self.bin.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&dir)
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-R", "-X", "stream", "-c", "fast"])
            .env("PGPASSWORD", &self.superuser_password);
        let out = as_owner(&mut cmd, self.owner)
            .output()
            .context("running pg_basebackup")?;
        if !out.status.success() {
            bail!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut s = PgCluster {
            bin: self.bin.clone(),
            dir,
            port: 0,
            owner: self.owner,
            child: None,
            superuser_password: self.superuser_password.clone(),
            role_password: self.role_password.clone(),
            log: parent.join(format!("{name}.log")),
        };
        s.start_server().await?;
        Ok(s)
    }

    /// Makes every commit wait for a standby (`synchronous_standby_names =
    /// '*'`, `synchronous_commit = on`) and waits until one streams
    /// synchronously.
    pub async fn require_synchronous_standby(&self) -> anyhow::Result<()> {
        // One statement per call: ALTER SYSTEM refuses a multi-statement batch.
        self.admin_batch("ALTER SYSTEM SET synchronous_standby_names = '*'")
            .await?;
        self.admin_batch("SELECT pg_reload_conf()").await?;
        let t0 = Instant::now();
        loop {
            let states = self
                .admin_query("postgres", "SELECT sync_state FROM pg_stat_replication")
                .await?;
            if states.iter().any(|s| s == "sync") {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("no synchronous standby after 30 s (states: {states:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Promotes this standby to a primary and waits until it accepts writes.
    pub async fn promote(&self) -> anyhow::Result<()> {
        self.admin_batch("SELECT pg_promote(true, 30)").await?;
        let t0 = Instant::now();
        loop {
            let r = self
                .admin_query("postgres", "SELECT pg_is_in_recovery()::text")
                .await?;
            if r.first().map(String::as_str) == Some("false") {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the standby is still in recovery after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // By its own PID, never by name.
        self.kill();
    }
}

/// Creates `dir` (0700) owned by the cluster's user, and lets that user
/// through `parent`.
fn prepare_dir(parent: &Path, dir: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        // Search permission only: the user reaches its own directory, lists
        // nothing else.
        let mode = fs::metadata(parent)?.permissions().mode();
        fs::set_permissions(parent, fs::Permissions::from_mode(mode | 0o711))?;
        let mut p = parent.parent();
        while let Some(up) = p {
            let m = fs::metadata(up)?.permissions().mode();
            if m & 0o001 == 0 {
                fs::set_permissions(up, fs::Permissions::from_mode(m | 0o001))?;
            }
            p = up.parent();
        }
    }
    Ok(())
}

/// The server's message when it sent one (the driver's `Display` says only
/// "db error").
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        // std sets the group, drops supplementary groups and sets the user
        // in the child before exec: no wrapper process.
        cmd.gid(gid).uid(uid);
    }
    cmd
}
