//! Several stateless brokers on one PostgreSQL ledger (issue 15), next to the
//! embedded backend, in one run: every broker is a real `custody serve`
//! process (the release binary next to this one) with its own data directory
//! holding only the ledger's keys, on one PostgreSQL cluster of the bench's
//! own (`custody_cli::pgcluster`) and one OpenBao dev server.
//!
//! - durable appends through HTTP: the load of the `http` bench (sessions of
//!   their own, pre-signed `POST /v1/events/batch`), clients round-robin over
//!   1, 2 or 3 brokers on PostgreSQL, and over one embedded broker process;
//! - ack latency at half load: single-event appends over 2 brokers on a fixed
//!   arrival schedule at half their measured saturation rate, latency from
//!   the scheduled arrival (like `append`'s open loop); the embedded process
//!   at the same rate is the baseline;
//! - the kill switch across brokers: a session started on A holds live
//!   tokens minted on B and C; revoked on A; timed until OpenBao refuses
//!   every token, until B refuses its next append, and until C's policy
//!   check (a decision from its cached rules' state, caught up by
//!   LISTEN/NOTIFY) refuses; the same on one embedded process;
//! - start-up (spawn to the first `GET /v1/health` answer) with 10k, 100k
//!   and `--pg-entries` entries already in the ledger, next to the embedded
//!   backend's (which replays); the ledgers are built once per run as
//!   embedded data directories and copied with `custody migrate` (timed);
//! - growth: appends with 2 brokers on the `--pg-entries` ledger;
//! - the feed: a follower long-polling on B, an entry appended on A;
//! - where the cores went during each append line (brokers, PostgreSQL,
//!   this process), from /proc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use custody_agent::client::{session_event, Client, ClientError};
use custody_agent::sessionfile::SessionFile;
use custody_cli::dev::{example_config, free_port, postgres_config, write_secret_file, OpenBao};
use custody_cli::pgcluster::PgCluster;
use custody_identity::KeyPair;
use custody_ledger::authority::{Authority, TrustRoots};
use custody_ledger::store::Store;
use custody_ledger::{actions, ActionType, ActorKind, Event, SignedEvent};
use custody_wire::api::{FeedQuery, PolicyCheck};
use serde_json::json;
use tokio::task::JoinSet;

use crate::broker::{all_live, batch_load, ci_session, runtime, until_all_refused, BENCH_LIMITS};
use crate::util::{percentile, ratio, round, Results};
use crate::Args;

/// Callers in flight while the single-event saturation rate is measured.
const SATURATION_CALLERS: usize = 64;
/// Sessions the single-event appends are spread over.
const SINGLE_SESSIONS: usize = 16;
/// How long the open-loop schedule runs.
const OPEN_LOOP_FOR: Duration = Duration::from_secs(4);
/// The smaller ledgers start-up is timed at, besides `--pg-entries`.
const SIZES: [usize; 2] = [10_000, 100_000];

/// A `custody serve` process, killed when dropped.
struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where brokers of one ledger keep their configs and data directories, and
/// the database URL file when the ledger is in PostgreSQL.
struct Ledger {
    dir: PathBuf,
    url_file: Option<PathBuf>,
}

impl Ledger {
    fn data(&self, i: usize) -> PathBuf {
        self.dir.join(format!("b{i}"))
    }
}

/// OpenBao, PostgreSQL and the people, shared by every ledger of the run.
struct Rig {
    tmp: tempfile::TempDir,
    bao: OpenBao,
    pg: PgCluster,
    custody: PathBuf,
    dev: KeyPair,
    admin: KeyPair,
    http: reqwest::Client,
}

impl Rig {
    async fn start() -> anyhow::Result<Self> {
        let custody = std::env::current_exe()?.with_file_name("custody");
        if !custody.exists() {
            bail!(
                "{} is missing: build it with `cargo build --release -p custody-cli`",
                custody.display()
            );
        }
        let tmp = tempfile::tempdir()?;
        let pg = PgCluster::start(tmp.path(), "pg")
            .await
            .context("a PostgreSQL cluster (scripts/setup installs Debian's postgresql)")?;
        let bao = OpenBao::start(tmp.path()).await?;
        let token = bao.configure_examples().await?;
        write_secret_file(&tmp.path().join("vault-token"), &token)?;
        Ok(Self {
            tmp,
            bao,
            pg,
            custody,
            dev: KeyPair::generate(),
            admin: KeyPair::generate(),
            http: reqwest::Client::builder().no_proxy().build()?,
        })
    }

    fn embedded(&self, name: &str) -> Ledger {
        Ledger {
            dir: self.tmp.path().join(name),
            url_file: None,
        }
    }

    /// A ledger in database `name` of the cluster (created, owned by the
    /// brokers' role).
    async fn postgres(&self, name: &str) -> anyhow::Result<Ledger> {
        self.pg
            .admin_batch(&format!(
                "CREATE DATABASE {name} OWNER {}",
                custody_cli::pgcluster::ROLE
            ))
            .await?;
        let url = self.pg.url();
        let (base, _) = url.rsplit_once('/').context("the cluster's URL")?;
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let url_file = dir.join("pg-url");
        write_secret_file(&url_file, &format!("{base}/{name}"))?;
        Ok(Ledger {
            dir,
            url_file: Some(url_file),
        })
    }

    /// Starts broker `i` of `l` and waits until `GET /v1/health` answers;
    /// returns it and the time from spawning it.
    async fn spawn(&self, l: &Ledger, i: usize) -> anyhow::Result<(Proc, Duration)> {
        let data = l.data(i);
        if i > 0 {
            copy_keys(&l.data(0), &data)?;
        }
        let port = free_port()?;
        let mut config = example_config(
            &format!("127.0.0.1:{port}"),
            &data,
            &self.bao.addr,
            &self.tmp.path().join("vault-token"),
            self.admin.did().as_str(),
            self.dev.did().as_str(),
        );
        if let Some(f) = &l.url_file {
            config += &postgres_config(f);
        }
        config += BENCH_LIMITS;
        let cfg = l.dir.join(format!("custody-{i}.toml"));
        std::fs::create_dir_all(&l.dir)?;
        std::fs::write(&cfg, config)?;
        let log_path = l.dir.join(format!("broker-{i}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let url = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        let child = Command::new(&self.custody)
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.custody.display()))?;
        let mut p = Proc { child, url };
        let health = format!("{}/v1/health", p.url);
        loop {
            if let Some(st) = p.child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                bail!(
                    "custody serve exited ({st}):\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if let Ok(r) = self.http.get(&health).send().await {
                if r.status().is_success() {
                    return Ok((p, t0.elapsed()));
                }
            }
            if t0.elapsed() > Duration::from_secs(300) {
                bail!("custody serve did not answer within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Brokers 0..n of `l`, broker 0 first (on a new ledger it creates the
    /// keys the others get copies of).
    async fn brokers(&self, l: &Ledger, n: usize) -> anyhow::Result<Vec<Proc>> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(self.spawn(l, i).await?.0);
        }
        Ok(out)
    }

    async fn session(&self, url: &str, agent: &str) -> anyhow::Result<(Client, SessionFile)> {
        let c = Client::new(url, None)?;
        let s = ci_session(&c, &self.dev, agent).await?;
        Ok((c, s))
    }

    /// The `http` bench's load, clients round-robin over `brokers`: its
    /// appends/s, and the cores busy meanwhile in the brokers, in
    /// PostgreSQL and in this process (the load generator).
    async fn batch_rate(
        &self,
        a: &Args,
        brokers: &[Proc],
        tag: &str,
    ) -> anyhow::Result<(f64, [f64; 3])> {
        let clients = a.http_clients.max(1);
        let mut work = Vec::with_capacity(clients);
        for k in 0..clients {
            let url = &brokers[k % brokers.len()].url;
            work.push(self.session(url, &format!("bench-{tag}-{k}")).await?);
        }
        let batch = a.http_batch.clamp(1, custody_wire::api::MAX_BATCH_EVENTS);
        let watch = [
            brokers.iter().map(|b| b.child.id()).collect::<Vec<_>>(),
            self.pg.pid().into_iter().collect(),
        ];
        let load = batch_load(work, a.http_events / clients, batch, &watch).await?;
        let wall = load.took.as_secs_f64();
        let cores =
            [load.cpu[0] / wall, load.cpu[1] / wall, load.cpu_self / wall].map(|c| round(c, 2));
        Ok((load.per_s(), cores))
    }
}

/// A second broker of a ledger gets the first one's ledger key and session
/// CA (SECURITY.md §6.1: every broker of a ledger holds the same key).
fn copy_keys(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for f in ["ledger.key", "ca.key", "ca.pem"] {
        if from.join(f).exists() && !to.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f))?;
        }
    }
    Ok(())
}

/// An embedded ledger of a genesis (the rig's trust roots) and `n` more
/// entries, written straight into broker 0's data directory of `l`, with its
/// ledger key: what a broker that appended them would have on disk. Half are
/// `prompt`s by the developer; the other half is what the hook on every tool
/// call writes — an agent session's call decided with its check: the ledger
/// key's `policy.decision` allowing it and the session's `tool.call` that
/// claims it, appended together — so a broker's start-up meets a ledger of
/// ordinary agent traffic, not only of events the oversight rule ignores.
fn fill(rig: &Rig, l: &Ledger, n: usize) -> anyhow::Result<()> {
    let data = l.data(0);
    std::fs::create_dir_all(&data)?;
    let ledger = KeyPair::generate();
    ledger.save(&data.join("ledger.key"))?;
    let store = Store::open(&data.join("ledger"), Authority::new(Some(ledger.did())))?;
    let mut g = Event::new(
        ledger.did(),
        ActorKind::Service,
        ActionType::new(actions::GENESIS)?,
    );
    g.details = TrustRoots {
        admins: [rig.admin.did()].into_iter().collect(),
        delegators: [rig.dev.did()].into_iter().collect(),
        ..Default::default()
    }
    .to_details();
    crate::verify::append_all(&store, vec![g.sign(&ledger)?])?;
    let cores = crate::util::cores();
    let dev = &rig.dev;
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..cores)
            .map(|c| {
                let (store, ledger) = (&store, &ledger);
                sc.spawn(move || -> anyhow::Result<()> {
                    let agent = FillSession::start(store, dev)?;
                    let mut batch = Vec::with_capacity(1000);
                    // Four entries per step: two prompts, a decision and
                    // its call (kept in one batch, so adjacent).
                    for i in (c * 4..n).step_by(cores * 4) {
                        for k in 0..2 {
                            let mut e =
                                Event::new(dev.did(), ActorKind::Human, ActionType::new("prompt")?);
                            e.details.insert("i".into(), (i + k).into());
                            batch.push(e.sign(dev)?);
                        }
                        batch.extend(agent.decided_call(ledger, i)?);
                        if batch.len() >= 1000 {
                            crate::verify::append_all(store, std::mem::take(&mut batch))?;
                        }
                    }
                    crate::verify::append_all(store, batch)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a filler panicked"))?)
            .collect::<anyhow::Result<Vec<()>>>()
    })?;
    Ok(())
}

/// An agent session of the filled ledger, started by the developer.
struct FillSession {
    key: KeyPair,
    delegation: custody_identity::Delegation,
}

impl FillSession {
    fn start(store: &Store<Authority>, dev: &KeyPair) -> anyhow::Result<Self> {
        let now = time::OffsetDateTime::now_utc();
        let key = KeyPair::generate();
        let delegation = custody_identity::Delegation::new(
            dev.did(),
            key.did(),
            "claude-code".into(),
            vec!["repo-read".into()],
            "chat".into(),
            now - time::Duration::minutes(1),
            now + time::Duration::days(1),
        )?;
        let s = FillSession { key, delegation };
        let mut e = s.event(s.key.did(), ActorKind::Agent, actions::SESSION_START)?;
        e.details
            .insert("delegation".into(), s.delegation.issue(dev)?.into());
        crate::verify::append_all(store, vec![e.sign(&s.key)?])?;
        Ok(s)
    }

    fn event(
        &self,
        actor: custody_identity::Did,
        kind: ActorKind,
        action: &str,
    ) -> anyhow::Result<Event> {
        let mut e = Event::new(actor, kind, ActionType::new(action)?);
        e.session = Some(custody_ledger::SessionId::new(self.delegation.id.clone())?);
        e.on_behalf_of = Some(self.delegation.issuer.clone());
        e.context = Some(custody_ledger::Context::new(
            self.delegation.context.clone(),
        )?);
        Ok(e)
    }

    /// The ledger key's allow of call `i` and the session's call decided
    /// with it.
    fn decided_call(&self, ledger: &KeyPair, i: usize) -> anyhow::Result<[SignedEvent; 2]> {
        let input = json!({"command": format!("cargo test --test t{i}")});
        let digest =
            custody_ledger::oversight::action_digest(&self.key.did(), "Bash", &input, "/w")?;
        let mut d = self.event(ledger.did(), ActorKind::Service, actions::POLICY_DECISION)?;
        d.details
            .insert("session_did".into(), self.key.did().as_str().into());
        d.details.insert("tool".into(), "Bash".into());
        d.details.insert("decision".into(), "allow".into());
        d.details.insert("policies".into(), json!(["allow-tests"]));
        d.details
            .insert("action_digest".into(), digest.clone().into());
        let mut call = self.event(self.key.did(), ActorKind::Agent, actions::TOOL_CALL)?;
        call.details.insert("tool".into(), "Bash".into());
        call.details.insert("action_digest".into(), digest.into());
        call.approval = Some(custody_ledger::Approval::decided_with_call());
        Ok([d.sign(ledger)?, call.sign(&self.key)?])
    }
}

/// An embedded ledger of `n` entries and its copy in PostgreSQL; the
/// embedded broker's first start and the migration timed.
struct Sized {
    n: usize,
    embedded: Ledger,
    pg: Ledger,
    embedded_first_start: Duration,
    migrate: Duration,
}

async fn sized(rig: &Rig, n: usize) -> anyhow::Result<Sized> {
    let embedded = rig.embedded(&format!("e{n}"));
    let t0 = Instant::now();
    // Blocking work (signing, checking, syncing) on this worker thread.
    tokio::task::block_in_place(|| fill(rig, &embedded, n))?;
    // The embedded broker's first start replays the ledger and makes the
    // session CA the PostgreSQL brokers get a copy of.
    eprintln!("pg: filled {n} in {:.1} s", t0.elapsed().as_secs_f64());
    let (p, embedded_first_start) = rig.spawn(&embedded, 0).await?;
    drop(p);
    let pg = rig.postgres(&format!("p{n}")).await?;
    let url = std::fs::read_to_string(pg.url_file.as_ref().context("a url file")?)?;
    let t0 = Instant::now();
    let out = tokio::process::Command::new(&rig.custody)
        .arg("migrate")
        .arg("--from")
        .arg(embedded.data(0))
        .arg("--to")
        .arg(url.trim())
        .stdin(Stdio::null())
        .output()
        .await?;
    let migrate = t0.elapsed();
    eprintln!("pg: migrated {n} in {:.1} s", migrate.as_secs_f64());
    anyhow::ensure!(
        out.status.success(),
        "custody migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    copy_keys(&embedded.data(0), &pg.data(0))?;
    Ok(Sized {
        n,
        embedded,
        pg,
        embedded_first_start,
        migrate,
    })
}

/// Pre-signed single events, round-robin over `sessions`.
fn single_events(
    sessions: &[(Client, SessionFile)],
    n: usize,
) -> anyhow::Result<Vec<(usize, KeyPair, SignedEvent)>> {
    let keys: Vec<KeyPair> = sessions
        .iter()
        .map(|(_, s)| s.key())
        .collect::<anyhow::Result<_>>()?;
    (0..n)
        .map(|i| {
            let k = i % sessions.len();
            let mut e = session_event(&sessions[k].1, "tool.call")?;
            e.details.insert("i".into(), i.into());
            e.details.insert("tool".into(), "Bash".into());
            Ok((k, keys[k].clone(), e.sign(&keys[k])?))
        })
        .collect()
}

async fn sessions_over(
    rig: &Rig,
    brokers: &[Proc],
    tag: &str,
) -> anyhow::Result<Vec<(Client, SessionFile)>> {
    let mut out = Vec::with_capacity(SINGLE_SESSIONS);
    for k in 0..SINGLE_SESSIONS {
        out.push(
            rig.session(&brokers[k % brokers.len()].url, &format!("bench-{tag}-{k}"))
                .await?,
        );
    }
    Ok(out)
}

/// Single-event appends (`POST /v1/events`), [`SATURATION_CALLERS`] in
/// flight, sessions round-robin over the brokers: appends/s.
async fn single_saturation(sessions: &[(Client, SessionFile)], n: usize) -> anyhow::Result<f64> {
    let evs = single_events(sessions, n)?;
    let queue = Arc::new(std::sync::Mutex::new(evs));
    let clients: Arc<Vec<Client>> = Arc::new(sessions.iter().map(|(c, _)| c.clone()).collect());
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..SATURATION_CALLERS {
        let (queue, clients) = (queue.clone(), clients.clone());
        set.spawn(async move {
            loop {
                let next = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
                let Some((k, key, ev)) = next else { break };
                clients[k].log_as(&key, ev, None).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(x) = set.join_next().await {
        x??;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Single-event appends arriving at `rate` per second on a fixed schedule,
/// whatever the answers; sorted latencies from each scheduled arrival.
async fn open_loop(sessions: &[(Client, SessionFile)], rate: f64) -> anyhow::Result<Vec<Duration>> {
    let n = ((rate * OPEN_LOOP_FOR.as_secs_f64()) as usize).clamp(200, 40_000);
    let evs = single_events(sessions, n)?;
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut set = JoinSet::new();
    for (i, (k, key, ev)) in evs.into_iter().enumerate() {
        let due = start + gap.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let c = sessions[k].0.clone();
        set.spawn(async move {
            c.log_as(&key, ev, None).await?;
            anyhow::Ok(due.elapsed())
        });
    }
    let mut lat = Vec::with_capacity(n);
    while let Some(x) = set.join_next().await {
        lat.push(x??);
    }
    lat.sort();
    Ok(lat)
}

/// A follower long-polling the feed on `follow` while an entry is appended
/// on `append`: the time from the append's answer to the follower's page
/// holding that entry, `samples` times (sorted).
async fn feed_wake(
    rig: &Rig,
    append: &str,
    follow: &str,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (ca, s) = rig.session(append, "bench-feed-wake").await?;
    let cf = Client::new(follow, None)?;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples * 3 {
        if out.len() == samples {
            break;
        }
        let size = ca.health().await?.entries.max(cf.health().await?.entries);
        let q = FeedQuery {
            after: Some(size.saturating_sub(1)),
            limit: None,
            wait: Some(10),
        };
        let (c, admin) = (cf.clone(), rig.admin.clone());
        let follower = tokio::spawn(async move {
            let page = c.feed(&admin, &q).await;
            (page, Instant::now())
        });
        // Let the request reach the broker and wait there.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut e = session_event(&s, "tool.call")?;
        e.details.insert("i".into(), i.into());
        let seq = ca.log(&s, e).await?.seq;
        let acked = Instant::now();
        let (page, at) = follower.await?;
        // Another entry may have been first (a checkpoint's trust update,
        // a late catch-up): only a page holding ours counts.
        if page?.entries.iter().any(|e| e.seq == seq) {
            out.push(at.saturating_duration_since(acked));
        }
    }
    anyhow::ensure!(
        out.len() == samples,
        "the follower missed the appended entry"
    );
    out.sort();
    Ok(out)
}

fn check() -> PolicyCheck {
    PolicyCheck {
        tool: "Bash".into(),
        input: json!({"command": "cargo test"}),
        cwd: "/work".into(),
        branch: "main".into(),
        call_id: None,
        record: None,
    }
}

/// One kill switch's timings, each from just before the revoke request.
struct Kill {
    /// From the session's start on A until B and C both know it.
    known: Duration,
    /// Every token refused by OpenBao and B's next append refused.
    total: Duration,
    call: Duration,
    /// B's next append refused.
    append_refused: Duration,
    /// C's policy check refused (its cached rules' state caught up).
    policy_refused: Duration,
}

/// Is `e` the broker refusing (a 4xx answer), not a transport failure?
fn refused(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::Api { status, .. }) if (400..500).contains(status)
    )
}

/// A session started on `a`, `tokens` tokens minted round-robin on `b` and
/// `c`, revoked on `a`.
async fn kill(rig: &Rig, [a, b, c]: [&str; 3], tokens: usize, run: usize) -> anyhow::Result<Kill> {
    let limit = Duration::from_secs(10);
    let (ca, s) = rig.session(a, &format!("bench-kill-{run}")).await?;
    let started = Instant::now();
    let (cb, cc) = (
        Arc::new(Client::new(b, None)?),
        Arc::new(Client::new(c, None)?),
    );
    // B and C learn of the session when they catch up (LISTEN/NOTIFY, or
    // every 250 ms); a request before that is refused as `unknown_actor`.
    for x in [&cb, &cc] {
        while let Err(e) = x.status(&s).await {
            if started.elapsed() > limit {
                return Err(e.context("the session never became known on B or C"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let known = started.elapsed();
    let mut minted = Vec::with_capacity(tokens);
    let mut set = JoinSet::new();
    for i in 0..tokens {
        if set.len() >= 4 {
            if let Some(x) = set.join_next().await {
                minted.push(x??);
            }
        }
        let (m, s) = (
            if i.is_multiple_of(2) {
                cb.clone()
            } else {
                cc.clone()
            },
            s.clone(),
        );
        set.spawn(async move { m.mint(&s, "ci-read").await.map(|m| m.token) });
    }
    while let Some(x) = set.join_next().await {
        minted.push(x??);
    }
    all_live(&rig.http, &rig.bao.addr, &minted).await?;
    cc.policy_check(&s, &check())
        .await
        .context("C's policy check before the revoke")?;
    let t0 = Instant::now();
    // B appends until it refuses; C checks until it refuses.
    let appends = {
        let (cb, s) = (cb.clone(), s.clone());
        tokio::spawn(async move {
            loop {
                match cb.log(&s, session_event(&s, "tool.call")?).await {
                    Ok(_) if t0.elapsed() < limit => {}
                    Ok(_) => bail!("B still accepted the session's appends after {limit:?}"),
                    Err(e) if refused(&e) => return Ok(t0.elapsed()),
                    Err(e) => return Err(e),
                }
            }
        })
    };
    let checks = {
        let (cc, s) = (cc.clone(), s.clone());
        tokio::spawn(async move {
            loop {
                match cc.policy_check(&s, &check()).await {
                    Ok(_) if t0.elapsed() < limit => {}
                    Ok(_) => bail!("C still allowed the session's tool calls after {limit:?}"),
                    Err(e) if refused(&e) => return Ok(t0.elapsed()),
                    Err(e) => return Err(e),
                }
            }
        })
    };
    ca.revoke(&rig.admin, &s.did, "bench kill switch").await?;
    let call = t0.elapsed();
    until_all_refused(&rig.http, &rig.bao.addr, &minted, limit).await?;
    let tokens_dead = t0.elapsed();
    let append_refused = appends.await??;
    let policy_refused = checks.await??;
    Ok(Kill {
        known,
        total: tokens_dead.max(append_refused),
        call,
        append_refused,
        policy_refused,
    })
}

async fn kills(
    rig: &Rig,
    urls: [&str; 3],
    a: &Args,
    tag: usize,
) -> anyhow::Result<[Vec<Duration>; 5]> {
    let mut out: [Vec<Duration>; 5] = Default::default();
    for run in 0..a.pg_killswitch_runs {
        let k = kill(rig, urls, a.killswitch_tokens, tag * 1000 + run).await?;
        for (v, x) in
            out.iter_mut()
                .zip([k.total, k.call, k.append_refused, k.policy_refused, k.known])
        {
            v.push(x);
        }
    }
    for v in &mut out {
        v.sort();
    }
    Ok(out)
}

/// The whole benchmark: ledgers built once, measurements `--repeat` times.
pub fn bench(a: &Args) -> anyhow::Result<Vec<Results>> {
    runtime()?.block_on(async {
        let rig = Rig::start().await?;
        let mut base = Results::new();
        let mut sizes = Vec::new();
        for n in SIZES
            .into_iter()
            .filter(|&n| n < a.pg_entries)
            .chain([a.pg_entries])
        {
            eprintln!("pg: building a ledger of {n} entries and migrating it");
            sizes.push(sized(&rig, n).await?);
        }
        let big = sizes.last().context("no ledger sizes")?;
        base.insert("pg_entries".into(), json!(big.n));
        base.insert(
            "pg_migrate_s".into(),
            json!(round(big.migrate.as_secs_f64(), 2)),
        );
        base.insert(
            "pg_migrate_per_s".into(),
            json!((big.n as f64 / big.migrate.as_secs_f64()).round()),
        );
        base.insert(
            "pg_embedded_startup_big_ms".into(),
            json!(round(big.embedded_first_start.as_secs_f64() * 1e3, 1)),
        );
        if big.n == 1_000_000 {
            base.insert(
                "pg_migrate_1m_s".into(),
                json!(round(big.migrate.as_secs_f64(), 2)),
            );
            base.insert(
                "pg_embedded_startup_1m_ms".into(),
                json!(round(big.embedded_first_start.as_secs_f64() * 1e3, 1)),
            );
        }
        let main_pg = rig.postgres("appends").await?;
        let main_embedded = rig.embedded("embedded");
        let mut runs = Vec::new();
        for rep in 0..a.repeat.max(1) {
            let mut r = base.clone();
            one_run(a, &rig, &main_pg, &main_embedded, &sizes, rep, &mut r).await?;
            runs.push(r);
        }
        Ok(runs)
    })
}

/// Cores busy during a load: in the brokers, PostgreSQL, the load generator.
fn insert_cores(r: &mut Results, line: &str, [brokers, pg, bench]: [f64; 3]) {
    r.insert(format!("{line}_cores_brokers"), json!(brokers));
    r.insert(format!("{line}_cores_postgres"), json!(pg));
    r.insert(format!("{line}_cores_loadgen"), json!(bench));
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1e3, 1)
}

async fn one_run(
    a: &Args,
    rig: &Rig,
    main_pg: &Ledger,
    main_embedded: &Ledger,
    sizes: &[Sized],
    rep: usize,
    r: &mut Results,
) -> anyhow::Result<()> {
    // Appends, the same load on every line.
    let t = Instant::now();
    let emb = rig.brokers(main_embedded, 1).await?;
    let (embedded_rate, cores) = rig
        .batch_rate(a, &emb, &format!("e{rep}"))
        .await
        .context("appends on the embedded process")?;
    insert_cores(r, "pg_embedded", cores);
    eprintln!("pg: embedded appends {:.1} s", t.elapsed().as_secs_f64());
    drop(emb);
    r.insert("pg_embedded_http_per_s".into(), json!(embedded_rate));
    let mut rates = Vec::new();
    for n in 1..=3 {
        let t = Instant::now();
        let bs = rig.brokers(main_pg, n).await?;
        let (rate, cores) = rig
            .batch_rate(a, &bs, &format!("p{rep}-{n}"))
            .await
            .with_context(|| format!("appends on {n} brokers"))?;
        insert_cores(r, &format!("pg_{n}_brokers"), cores);
        eprintln!(
            "pg: appends on {n} brokers {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let key = if n == 1 {
            "pg_1_broker_per_s".to_string()
        } else {
            format!("pg_{n}_brokers_per_s")
        };
        r.insert(key, json!(rate));
        rates.push(rate);
        if n == 2 {
            // Ack latency at half load, over the same 2 brokers.
            let sessions = sessions_over(rig, &bs, &format!("s{rep}")).await?;
            let t = Instant::now();
            let sat = single_saturation(&sessions, 8_000)
                .await
                .context("single appends")?;
            let rate = (sat / 2.0).max(1.0);
            let lat = open_loop(&sessions, rate).await.context("open loop")?;
            eprintln!("pg: ack latency {:.1} s", t.elapsed().as_secs_f64());
            r.insert("pg_single_2_brokers_per_s".into(), json!(sat.round()));
            r.insert("pg_ack_rate_per_s".into(), json!(rate.round()));
            r.insert("pg_ack_p50_ms".into(), json!(percentile(&lat, 0.5)));
            r.insert("pg_ack_p99_ms".into(), json!(percentile(&lat, 0.99)));
            drop(sessions);
            // The embedded process at the same rate.
            let emb = rig.brokers(main_embedded, 1).await?;
            let sessions = sessions_over(rig, &emb, &format!("se{rep}")).await?;
            let lat = open_loop(&sessions, rate).await?;
            r.insert(
                "pg_ack_embedded_p99_ms".into(),
                json!(percentile(&lat, 0.99)),
            );
            drop(emb);
            // The feed: a follower on B, the entry appended on A; and both
            // on A (the broker that appended wakes its own followers).
            let other = feed_wake(rig, &bs[0].url, &bs[1].url, 10).await?;
            let same = feed_wake(rig, &bs[0].url, &bs[0].url, 10).await?;
            r.insert("pg_feed_wake_p50_ms".into(), json!(percentile(&other, 0.5)));
            r.insert(
                "pg_feed_wake_p99_ms".into(),
                json!(percentile(&other, 0.99)),
            );
            r.insert(
                "pg_feed_wake_same_broker_p50_ms".into(),
                json!(percentile(&same, 0.5)),
            );
        }
        if n == 3 {
            let urls = [bs[0].url.as_str(), bs[1].url.as_str(), bs[2].url.as_str()];
            let t = Instant::now();
            let [total, call, append, policy, known] = kills(rig, urls, a, rep * 2)
                .await
                .context("kill switch across brokers")?;
            eprintln!("pg: kill switch {:.1} s", t.elapsed().as_secs_f64());
            r.insert(
                "pg_killswitch_p50_ms".into(),
                json!(percentile(&total, 0.5)),
            );
            r.insert(
                "pg_killswitch_p99_ms".into(),
                json!(percentile(&total, 0.99)),
            );
            r.insert(
                "pg_killswitch_revoke_call_p50_ms".into(),
                json!(percentile(&call, 0.5)),
            );
            r.insert(
                "pg_revoke_visible_p50_ms".into(),
                json!(percentile(&append, 0.5)),
            );
            r.insert(
                "pg_revoke_visible_ms".into(),
                json!(percentile(&append, 0.99)),
            );
            r.insert(
                "pg_session_visible_p99_ms".into(),
                json!(percentile(&known, 0.99)),
            );
            r.insert(
                "pg_cached_revoke_p50_ms".into(),
                json!(percentile(&policy, 0.5)),
            );
            r.insert(
                "pg_cached_revoke_p99_ms".into(),
                json!(percentile(&policy, 0.99)),
            );
        }
    }
    r.insert(
        "pg_2_brokers_vs_embedded_ratio".into(),
        json!(ratio(rates[1], embedded_rate)),
    );
    r.insert(
        "pg_1_broker_vs_embedded_ratio".into(),
        json!(ratio(rates[0], embedded_rate)),
    );
    r.insert(
        "pg_3_vs_1_brokers_ratio".into(),
        json!(ratio(rates[2], rates[0])),
    );
    // The kill switch on one embedded process (A = B = C), same shape.
    {
        let emb = rig.brokers(main_embedded, 1).await?;
        let u = emb[0].url.as_str();
        let [total, _, _, _, _] = kills(rig, [u, u, u], a, rep * 2 + 1).await?;
        let e50 = percentile(&total, 0.5);
        r.insert("pg_killswitch_embedded_p50_ms".into(), json!(e50));
        r.insert(
            "pg_killswitch_embedded_p99_ms".into(),
            json!(percentile(&total, 0.99)),
        );
        let p50 = r["pg_killswitch_p50_ms"].as_f64().unwrap_or(0.0);
        r.insert(
            "pg_killswitch_vs_embedded_ratio".into(),
            json!(ratio(p50, e50)),
        );
    }

    // Start-up with the ledger already there.
    for s in sizes {
        let (p, t) = rig.spawn(&s.pg, 0).await?;
        drop(p);
        r.insert(format!("pg_startup_{}_ms", label(s.n)), json!(ms(t)));
        if s.n < 1_000_000 && s.n != a.pg_entries {
            let (p, t) = rig.spawn(&s.embedded, 0).await?;
            drop(p);
            r.insert(
                format!("pg_embedded_startup_{}_ms", label(s.n)),
                json!(ms(t)),
            );
        }
    }
    if let (Some(p), Some(e)) = (
        r.get("pg_startup_100k_ms").and_then(|v| v.as_f64()),
        r.get("pg_embedded_startup_100k_ms")
            .and_then(|v| v.as_f64()),
    ) {
        r.insert(
            "pg_startup_vs_embedded_100k_ratio".into(),
            json!(ratio(p, e)),
        );
    }

    // Growth: 2 brokers on the big ledger.
    let big = sizes.last().context("no ledger sizes")?;
    let bs = rig.brokers(&big.pg, 2).await?;
    let entries = Client::new(&bs[0].url, None)?.health().await?.entries;
    let (rate, _) = rig
        .batch_rate(a, &bs, &format!("g{rep}"))
        .await
        .context("appends on the big ledger")?;
    drop(bs);
    r.insert("pg_2_brokers_big_ledger_entries".into(), json!(entries));
    r.insert("pg_2_brokers_big_per_s".into(), json!(rate));
    if big.n == 1_000_000 {
        r.insert("pg_2_brokers_at_1m_per_s".into(), json!(rate));
    }
    r.insert(
        "pg_2_brokers_big_vs_small_ratio".into(),
        json!(ratio(rate, rates[1])),
    );
    Ok(())
}

/// 10000 → "10k", 1000000 → "1m".
fn label(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}m", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}
