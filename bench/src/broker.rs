//! Benchmarks against a real broker (in this process, on a loopback port)
//! and a real OpenBao dev server: `custody token` mints, the kill switch, and
//! batched appends over HTTP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use custody_agent::client::{session_event, Client, ClientError};
use custody_agent::sessionfile::SessionFile;
use custody_cli::dev::{example_config, write_secret_file, OpenBao, BROKER_ROLE, PARENT_POLICY};
use custody_identity::KeyPair;
use custody_ledger::SignedEvent;
use custody_server::credentials::REVOKE_CONCURRENCY;
use custody_server::vault::Vault;
use custody_wire::api::{AppendBatch, BatchItem, BatchResult, PATH_EVENTS_BATCH};
use serde_json::json;
use tokio::task::JoinSet;

use crate::util::{events, percentile, ratio, round, Results};
use crate::Args;

/// The secret the `ci-read` scope (OpenBao policy) may read.
pub(crate) const ALLOWED_SECRET: &str = "ci/database";

/// What the benchmarks add to the example config: the per-DID rate limit and
/// body size raised so the load generators are not throttled.
pub(crate) const BENCH_LIMITS: &str = r#"
[limits]
requests_per_second = 1000000
max_body = 8388608
"#;

/// OpenBao + a broker serving in this process, with the keys it trusts.
pub(crate) struct Broker {
    pub(crate) tmp: tempfile::TempDir,
    bao: OpenBao,
    /// The broker's own OpenBao token (mint through the role, revoke by accessor).
    vault_token: String,
    pub(crate) url: String,
    pub(crate) dev: KeyPair,
    admin: KeyPair,
    /// In `[trust] auditors`: reads the entry feed.
    pub(crate) auditor: KeyPair,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Broker {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let bao = OpenBao::start(tmp.path()).await?;
        let vault_token = bao.configure_examples().await?;
        write_secret_file(&tmp.path().join("vault-token"), &vault_token)?;
        let dev = KeyPair::generate();
        let admin = KeyPair::generate();
        let auditor = KeyPair::generate();
        let cfgp = tmp.path().join("custody.toml");
        std::fs::write(
            &cfgp,
            example_config(
                "127.0.0.1:0",
                &tmp.path().join("data"),
                &bao.addr,
                &tmp.path().join("vault-token"),
                admin.did().as_str(),
                dev.did().as_str(),
            )
            .replacen(
                "[trust]\n",
                &format!("[trust]\nauditors = [\"{}\"]\n", auditor.did()),
                1,
            ) + BENCH_LIMITS,
        )?;
        let cfg = custody_server::config::Config::load(&cfgp)?;
        let vault = custody_server::vault_from_config(&cfg)?;
        let state = custody_server::AppState::open(cfg, vault).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(custody_server::serve(state, listener, async move {
            let _ = rx.await;
        }));
        Ok(Self {
            tmp,
            bao,
            vault_token,
            url,
            dev,
            admin,
            auditor,
            stop: Some(tx),
            server,
        })
    }

    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.url, None)
    }

    /// vaultrs straight to OpenBao with the broker's token and role: the baselines.
    fn direct(&self) -> anyhow::Result<Vault> {
        Ok(Vault::new(
            &self.bao.addr,
            &self.vault_token,
            Some(BROKER_ROLE.into()),
        )?)
    }

    pub(crate) async fn session(&self, c: &Client, agent: &str) -> anyhow::Result<SessionFile> {
        ci_session(c, &self.dev, agent).await
    }

    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.server.await??;
        drop(self.bao);
        drop(self.tmp);
        Ok(())
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `custody token` through the broker vs OpenBao direct, interleaved: the
/// same call the broker makes (a batch token created with a parent token
/// through the role), and vaultrs creating a service token with the
/// broker's token through the role (what a broker without parents does).
pub fn bench_mint(a: &Args, r: &mut Results) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let b = Broker::start().await?;
        let c = b.client()?;
        let session = b.session(&c, "bench").await?;
        let direct = b.direct()?;
        let batch = b.direct()?.with_parent_policy(Some(PARENT_POLICY.into()))?;
        let parent = batch
            .create_parent(Duration::from_secs(3600), Default::default())
            .await?;
        let policies = vec!["ci-read".to_string()];
        let mut broker_lat = Vec::new();
        let mut direct_lat = Vec::new();
        let mut batch_lat = Vec::new();
        // Interleaved, so all see the same machine load.
        for _ in 0..a.mints {
            let t = Instant::now();
            c.mint(&session, "ci-read").await?;
            broker_lat.push(t.elapsed());
            let t = Instant::now();
            batch
                .mint_child(
                    &parent.token,
                    &policies,
                    Duration::from_secs(60),
                    Default::default(),
                    "bench",
                )
                .await?;
            batch_lat.push(t.elapsed());
            let t = Instant::now();
            direct
                .mint(
                    &policies,
                    Duration::from_secs(60),
                    Default::default(),
                    "bench",
                )
                .await?;
            direct_lat.push(t.elapsed());
        }
        broker_lat.sort();
        direct_lat.sort();
        batch_lat.sort();
        let (p50, d50, b50) = (
            percentile(&broker_lat, 0.5),
            percentile(&direct_lat, 0.5),
            percentile(&batch_lat, 0.5),
        );
        r.insert("mint_p50_ms".into(), json!(p50));
        r.insert("mint_p99_ms".into(), json!(percentile(&broker_lat, 0.99)));
        r.insert("mint_direct_p50_ms".into(), json!(d50));
        r.insert("mint_direct_batch_p50_ms".into(), json!(b50));
        r.insert("mint_overhead_ratio".into(), json!(ratio(p50, b50)));
        r.insert("mint_vs_service_ratio".into(), json!(ratio(p50, d50)));
        b.stop().await
    })
}

/// Reads the allowed secret with each token until OpenBao refuses every one
/// (403); fails if one still works after `limit`. Returns how many reads
/// still succeeded (0: every token was refused at its first read).
pub(crate) async fn until_all_refused(
    http: &reqwest::Client,
    bao: &str,
    tokens: &[String],
    limit: Duration,
) -> anyhow::Result<usize> {
    let mut set = JoinSet::new();
    for t in tokens {
        let (http, t) = (http.clone(), t.clone());
        let url = format!("{bao}/v1/secret/data/{ALLOWED_SECRET}");
        set.spawn(async move {
            let t0 = Instant::now();
            let mut late = 0usize;
            loop {
                let st = http
                    .get(&url)
                    .header("X-Vault-Token", &t)
                    .send()
                    .await?
                    .status()
                    .as_u16();
                match st {
                    403 => return anyhow::Ok(late),
                    200 if t0.elapsed() < limit => {
                        late += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await
                    }
                    s => bail!("a revoked token still answered HTTP {s} after {limit:?}"),
                }
            }
        });
    }
    let mut late = 0;
    while let Some(x) = set.join_next().await {
        late += x??;
    }
    Ok(late)
}

/// Every token reads the allowed secret (checked before a revocation).
pub(crate) async fn all_live(
    http: &reqwest::Client,
    bao: &str,
    tokens: &[String],
) -> anyhow::Result<()> {
    for t in tokens {
        let st = http
            .get(format!("{bao}/v1/secret/data/{ALLOWED_SECRET}"))
            .header("X-Vault-Token", t)
            .send()
            .await?
            .status();
        anyhow::ensure!(st.is_success(), "a fresh token could not read: HTTP {st}");
    }
    Ok(())
}

/// Mints `n` tokens with vaultrs directly (the broker's token and role);
/// returns (token, accessor) pairs.
async fn mint_direct(direct: &Vault, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    let policies = vec!["ci-read".to_string()];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let m = direct
            .mint(
                &policies,
                Duration::from_secs(900),
                Default::default(),
                "bench",
            )
            .await?;
        out.push((m.token, m.accessor));
    }
    Ok(out)
}

/// Mints `n` tokens through the broker for `session`, a few in flight at once.
async fn mint_n(c: &Arc<Client>, session: &SessionFile, n: usize) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    let mut next = 0;
    while out.len() < n {
        while next < n && set.len() < 4 {
            let (c, s) = (c.clone(), session.clone());
            set.spawn(async move { c.mint(&s, "ci-read").await.map(|m| m.token) });
            next += 1;
        }
        match set.join_next().await {
            Some(x) => out.push(x??),
            None => break,
        }
    }
    Ok(out)
}

/// The kill switch: an admin revokes a session holding `--killswitch-tokens`
/// live tokens; timed until OpenBao refuses every token and the broker refuses
/// the session's next append. Baselines: revoking as many tokens by accessor
/// with vaultrs directly, one after another and with as many in flight as
/// the broker revokes at once when tokens are recorded one by one
/// ([`REVOKE_CONCURRENCY`]), each confirmed the same way. Interleaved.
pub fn bench_killswitch(a: &Args, r: &mut Results) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let b = Broker::start().await?;
        let c = Arc::new(b.client()?);
        let direct = Arc::new(b.direct()?);
        let http = reqwest::Client::builder().no_proxy().build()?;
        let n = a.killswitch_tokens;
        let limit = Duration::from_secs(10);
        let (mut total, mut call, mut direct_total, mut direct_calls, mut direct_parallel) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut tokens_revoked, mut late_reads) = (0u64, 0usize);
        for run in 0..a.killswitch_runs {
            // custody: a fresh session with n live tokens.
            let session = b.session(&c, &format!("bench-kill-{run}")).await?;
            let tokens = mint_n(&c, &session, n).await?;
            all_live(&http, &b.bao.addr, &tokens).await?;
            let next = session_event(&session, "tool.call")?;
            let t0 = Instant::now();
            let rv = c
                .revoke(&b.admin, &session.did, "bench kill switch")
                .await?;
            let t_call = t0.elapsed();
            let append = {
                let (c, s) = (c.clone(), session.clone());
                tokio::spawn(async move { c.log(&s, next).await })
            };
            late_reads += until_all_refused(&http, &b.bao.addr, &tokens, limit).await?;
            match append.await? {
                Ok(x) => bail!("the revoked session's append was accepted (seq {})", x.seq),
                Err(e) => match e.downcast_ref::<ClientError>() {
                    Some(ClientError::Api { status: 403, .. }) => {}
                    _ => bail!("the revoked session's append failed otherwise: {e:#}"),
                },
            }
            total.push(t0.elapsed());
            call.push(t_call);
            tokens_revoked += rv.tokens_revoked;

            // Baseline: as many tokens minted directly, revoked one by one by
            // accessor (as the broker does), confirmed the same way.
            let minted = mint_direct(&direct, n).await?;
            let tokens: Vec<String> = minted.iter().map(|m| m.0.clone()).collect();
            all_live(&http, &b.bao.addr, &tokens).await?;
            let t0 = Instant::now();
            for (_, accessor) in &minted {
                direct.revoke_accessor(accessor).await?;
            }
            let t_call = t0.elapsed();
            until_all_refused(&http, &b.bao.addr, &tokens, limit).await?;
            direct_total.push(t0.elapsed());
            direct_calls.push(t_call);

            // The best direct baseline: REVOKE_CONCURRENCY revocations in flight.
            let minted = mint_direct(&direct, n).await?;
            let tokens: Vec<String> = minted.iter().map(|m| m.0.clone()).collect();
            all_live(&http, &b.bao.addr, &tokens).await?;
            let t0 = Instant::now();
            let mut set = JoinSet::new();
            for (_, accessor) in minted {
                if set.len() >= REVOKE_CONCURRENCY {
                    if let Some(x) = set.join_next().await {
                        x??;
                    }
                }
                let d = direct.clone();
                set.spawn(async move { d.revoke_accessor(&accessor).await });
            }
            while let Some(x) = set.join_next().await {
                x??;
            }
            until_all_refused(&http, &b.bao.addr, &tokens, limit).await?;
            direct_parallel.push(t0.elapsed());
        }
        anyhow::ensure!(
            tokens_revoked == (a.killswitch_runs * n) as u64,
            "the broker reported {tokens_revoked} tokens revoked, expected {}",
            a.killswitch_runs * n
        );
        for v in [
            &mut total,
            &mut call,
            &mut direct_total,
            &mut direct_calls,
            &mut direct_parallel,
        ] {
            v.sort();
        }
        let (k50, d50) = (percentile(&total, 0.5), percentile(&direct_total, 0.5));
        r.insert("killswitch_runs".into(), json!(a.killswitch_runs));
        r.insert("killswitch_tokens".into(), json!(n));
        r.insert("killswitch_p50_ms".into(), json!(k50));
        r.insert("killswitch_p99_ms".into(), json!(percentile(&total, 0.99)));
        r.insert(
            "killswitch_revoke_call_p50_ms".into(),
            json!(percentile(&call, 0.5)),
        );
        r.insert(
            "killswitch_revoke_call_p99_ms".into(),
            json!(percentile(&call, 0.99)),
        );
        // Reads by a revoked session's token that OpenBao still served after
        // the revoke request returned: 0 means the kill had taken effect for
        // every token when the call answered, and the rest of
        // killswitch_p50/p99_ms is the observer's 100 reads.
        r.insert("killswitch_late_reads".into(), json!(late_reads));
        r.insert("revoke_direct_100_ms".into(), json!(d50));
        r.insert(
            "revoke_direct_100_p99_ms".into(),
            json!(percentile(&direct_total, 0.99)),
        );
        r.insert(
            "revoke_direct_100_calls_p50_ms".into(),
            json!(percentile(&direct_calls, 0.5)),
        );
        let best = percentile(&direct_parallel, 0.5);
        r.insert("revoke_direct_100_parallel_ms".into(), json!(best));
        r.insert(
            "revoke_direct_100_parallel_p99_ms".into(),
            json!(percentile(&direct_parallel, 0.99)),
        );
        r.insert(
            "revoke_direct_concurrency".into(),
            json!(REVOKE_CONCURRENCY),
        );
        r.insert("killswitch_vs_direct_ratio".into(), json!(ratio(k50, best)));
        r.insert("killswitch_vs_serial_ratio".into(), json!(ratio(k50, d50)));
        b.stop().await
    })
}

/// Appends through the broker over loopback HTTP: `--http-clients` sessions,
/// each its own client sending pre-signed batches of `--http-batch` events to
/// `POST /v1/events/batch`, one batch in flight per client.
pub fn bench_http(a: &Args, r: &mut Results) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let b = Broker::start().await?;
        let admin_client = b.client()?;
        let clients = a.http_clients.max(1);
        let per_client = a.http_events / clients;
        let mut work = Vec::new();
        for k in 0..clients {
            let c = b.client()?;
            let s = b.session(&c, &format!("bench-http-{k}")).await?;
            work.push((c, s));
        }
        let before = admin_client.health().await?.entries;
        let batch = a.http_batch.clamp(1, custody_wire::api::MAX_BATCH_EVENTS);
        let load = batch_load(work, per_client, batch, &[]).await?;
        let (took, lat) = (load.took, load.lat);
        let total = per_client * clients;
        let after = admin_client.health().await?.entries;
        anyhow::ensure!(
            after >= before + total as u64,
            "the ledger grew by {} entries, expected at least {total}",
            after - before
        );
        r.insert(
            "http_append_per_s".into(),
            json!((total as f64 / took.as_secs_f64()).round()),
        );
        r.insert("http_clients".into(), json!(clients));
        r.insert("http_batch".into(), json!(batch));
        r.insert("http_events".into(), json!(total));
        r.insert("http_batch_p50_ms".into(), json!(percentile(&lat, 0.5)));
        r.insert("http_batch_p99_ms".into(), json!(percentile(&lat, 0.99)));
        r.insert("http_seconds".into(), json!(round(took.as_secs_f64(), 2)));
        b.stop().await.context("stopping the broker")?;
        // Baseline without HTTP: the same number of pre-signed events, threads
        // and batch size, straight into a store (signatures checked, no
        // session authorization).
        let tmp = tempfile::tempdir()?;
        let evs = events(total);
        let rate = tokio::task::spawn_blocking(move || {
            crate::append::batched_run(&tmp.path().join("batched"), evs, clients, batch)
        })
        .await??;
        r.insert("append_batched_inprocess_per_s".into(), json!(rate.round()));
        anyhow::Ok(())
    })
}

/// What [`batch_load`] measured.
pub(crate) struct Load {
    pub(crate) took: Duration,
    /// CPU seconds, during the load, of the process trees `batch_load` was
    /// asked to watch (in order), and of this process.
    pub(crate) cpu: Vec<f64>,
    pub(crate) cpu_self: f64,
    /// Sorted latencies of the batch requests.
    pub(crate) lat: Vec<Duration>,
    pub(crate) total: usize,
}

impl Load {
    pub(crate) fn per_s(&self) -> f64 {
        (self.total as f64 / self.took.as_secs_f64()).round()
    }
}

/// `per_client` pre-signed `tool.call` events for each session of `work`,
/// in batches of `batch`, signed on every core.
pub(crate) fn sign_batches(
    work: &[(Client, SessionFile)],
    per_client: usize,
    batch: usize,
) -> anyhow::Result<Vec<Vec<Vec<SignedEvent>>>> {
    std::thread::scope(|sc| {
        let hs: Vec<_> = work
            .iter()
            .map(|(_, s)| {
                sc.spawn(move || -> anyhow::Result<Vec<Vec<SignedEvent>>> {
                    let key = s.key()?;
                    let mut evs = Vec::with_capacity(per_client);
                    for i in 0..per_client {
                        let mut e = session_event(s, "tool.call")?;
                        e.details.insert("i".into(), i.into());
                        e.details.insert("tool".into(), "Bash".into());
                        evs.push(e.sign(&key)?);
                    }
                    Ok(evs.chunks(batch.max(1)).map(<[_]>::to_vec).collect())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("signer panicked"))?)
            .collect()
    })
}

/// Each (client, session) of `work` sends `per_client` pre-signed events in
/// batches of `batch` to `POST /v1/events/batch` on its client's broker, one
/// batch in flight per client; fails if any event is refused. `watch`: the
/// process trees (each a list of root PIDs) whose CPU time to account.
pub(crate) async fn batch_load(
    work: Vec<(Client, SessionFile)>,
    per_client: usize,
    batch: usize,
    watch: &[Vec<u32>],
) -> anyhow::Result<Load> {
    let clients = work.len();
    // Sign up front (the session's work, not the broker's), on every core.
    let signed = sign_batches(&work, per_client, batch)?;
    let cpu0: Vec<_> = watch
        .iter()
        .map(|roots| crate::util::cpu_of_trees(roots))
        .collect();
    let self0 = crate::util::cpu_seconds();
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for ((c, s), batches) in work.into_iter().zip(signed) {
        set.spawn(async move {
            let key = s.key()?;
            let mut lat = Vec::with_capacity(batches.len());
            for events in batches {
                let n = events.len();
                let t = Instant::now();
                let res: BatchResult = c
                    .post(&key, PATH_EVENTS_BATCH, &AppendBatch { events })
                    .await?;
                lat.push(t.elapsed());
                anyhow::ensure!(res.results.len() == n, "short batch answer");
                if let Some(BatchItem::Err(e)) =
                    res.results.iter().find(|x| matches!(x, BatchItem::Err(_)))
                {
                    bail!("an event was refused: {} {}", e.error, e.message);
                }
            }
            anyhow::Ok(lat)
        });
    }
    let mut lat = Vec::new();
    while let Some(x) = set.join_next().await {
        lat.extend(x??);
    }
    let took = t0.elapsed();
    let cpu_self = crate::util::cpu_seconds() - self0;
    let cpu = watch
        .iter()
        .zip(&cpu0)
        .map(|(roots, before)| crate::util::cpu_between(before, &crate::util::cpu_of_trees(roots)))
        .collect();
    lat.sort();
    Ok(Load {
        took,
        cpu,
        cpu_self,
        lat,
        total: per_client * clients,
    })
}

/// `custody hook claude-code` on a PreToolUse payload, end to end: a new
/// process that loads the session, asks the broker's policy (recorded) and
/// appends the durable `tool.call`, answering the agent after both. Next to
/// it, the same hook on an event it records with one durable append and no
/// policy check, and the baseline: the same binary starting and exiting
/// (every hook event is recorded, so no event answers without the broker).
/// Interleaved.
pub fn bench_hook(a: &Args, r: &mut Results) -> anyhow::Result<()> {
    let custody = std::env::current_exe()?
        .parent()
        .context("the bench binary's directory")?
        .join("custody");
    if !custody.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p custody-cli`",
            custody.display()
        );
    }
    runtime()?.block_on(async {
        let b = Broker::start().await?;
        let c = b.client()?;
        let (session, _) = c
            .start_session(
                &b.dev,
                "claude-code",
                &["repo-read".to_string()],
                "chat",
                Duration::from_secs(900),
            )
            .await?;
        let file = b.tmp.path().join("hook-session.json");
        session.save(&file)?;
        let pre_tool_use = json!({
            "hook_event_name": "PreToolUse",
            "session_id": "bench",
            "cwd": "/tmp",
            "tool_name": "Bash",
            "tool_input": {"command": "cargo test --workspace"},
            "tool_use_id": "toolu_bench",
        })
        .to_string();
        // Recorded as an `agent.event`: no policy check, one durable append.
        let event = json!({"hook_event_name": "BenchNoop", "session_id": "bench"}).to_string();
        let run = |input: Option<String>| {
            let (custody, file) = (custody.clone(), file.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
                use std::io::Write;
                let t = Instant::now();
                let mut cmd = std::process::Command::new(&custody);
                match input {
                    Some(_) => cmd.args(["hook", "claude-code", "--session"]).arg(&file),
                    // The baseline: the same binary starting and exiting.
                    None => cmd.arg("--version"),
                };
                let mut child = cmd
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()?;
                let mut stdin = child.stdin.take().context("hook stdin")?;
                if let Some(input) = &input {
                    stdin.write_all(input.as_bytes())?;
                }
                drop(stdin);
                let out = child.wait_with_output()?;
                let took = t.elapsed();
                if !out.status.success() || (input.is_some() && !out.stdout.is_empty()) {
                    bail!(
                        "the hook did not allow the call: {} {}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                Ok(took)
            })
        };
        let before = c.health().await?.entries;
        let (mut hook, mut one, mut base) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..a.hook_calls {
            hook.push(run(Some(pre_tool_use.clone())).await??);
            one.push(run(Some(event.clone())).await??);
            base.push(run(None).await??);
        }
        // Each PreToolUse recorded its policy decision and its tool.call,
        // each other event itself.
        let recorded = c.health().await?.entries - before;
        if recorded < 3 * a.hook_calls as u64 {
            bail!("{recorded} entries for {} hook calls", a.hook_calls);
        }
        hook.sort();
        one.sort();
        base.sort();
        r.insert("hook_event_p50_ms".into(), json!(percentile(&one, 0.5)));
        r.insert("hook_event_p99_ms".into(), json!(percentile(&one, 0.99)));
        r.insert("hook_p50_ms".into(), json!(percentile(&hook, 0.5)));
        r.insert("hook_p99_ms".into(), json!(percentile(&hook, 0.99)));
        r.insert("hook_baseline_p50_ms".into(), json!(percentile(&base, 0.5)));
        r.insert(
            "hook_baseline_p99_ms".into(),
            json!(percentile(&base, 0.99)),
        );
        r.insert(
            "hook_overhead_ratio".into(),
            json!(ratio(percentile(&hook, 0.5), percentile(&base, 0.5))),
        );
        b.stop().await
    })
}

/// A session of `agent` with the `ci-read` scope in the `ci` context,
/// delegated by `dev`, started on `c`'s broker (what every bench load uses).
pub(crate) async fn ci_session(
    c: &Client,
    dev: &KeyPair,
    agent: &str,
) -> anyhow::Result<SessionFile> {
    let (s, _) = c
        .start_session(
            dev,
            agent,
            &["ci-read".to_string()],
            "ci",
            Duration::from_secs(900),
        )
        .await?;
    Ok(s)
}
