//! Crash safety (issue #8): a broker SIGKILLed over and over under concurrent
//! appends loses no acknowledged entry, and a full or read-only data directory
//! refuses appends with a clear error instead of losing or corrupting anything.
//!
//! `CUSTODY_CRASH_CYCLES=500 cargo test -p custody-tests --test crash` soaks the
//! kill loop (20 cycles by default); `CUSTODY_CRASH_SEED` replays the kill timing
//! of an earlier run (the seed is printed).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custody_agent::client::{session_event, Client, ClientError};
use custody_agent::sessionfile::SessionFile;
use custody_identity::KeyPair;
use custody_ledger::{actions, entry_hash, Entry};
use custody_tests::broker::Harness;
use custody_tests::read_lines;

/// Several appenders, many restarts: the per-DID rate limit is not under test.
const LIMITS: &str = "\n[limits]\nrequests_per_second = 100000\n";

/// An append the broker acknowledged: what it promised to keep.
#[derive(Clone, Debug)]
struct Ack {
    seq: u64,
    hash: String,
    nonce: String,
}

/// A session and its key, for appending fresh events.
struct Agent {
    session: SessionFile,
    key: KeyPair,
}

impl Agent {
    async fn start(h: &Harness, c: &Client) -> Self {
        let (session, _) = c
            .start_session(
                &h.developer,
                "claude-code",
                &["repo-read".to_string()],
                "chat",
                Duration::from_secs(3600),
            )
            .await
            .unwrap();
        let key = session.key().unwrap();
        Self { session, key }
    }

    /// Signs and sends a new event (fresh nonce): never a resend.
    async fn append(&self, c: &Client, details: &[(&str, serde_json::Value)]) -> AppendResult {
        let mut ev = session_event(&self.session, actions::TOOL_CALL).unwrap();
        ev.details.insert("tool".into(), "Bash".into());
        for (k, v) in details {
            ev.details.insert((*k).into(), v.clone());
        }
        let nonce = ev.nonce.to_hex();
        let signed = ev.sign(&self.key).unwrap();
        c.log_as(&self.key, signed, None).await.map(|a| Ack {
            seq: a.seq,
            hash: a.hash,
            nonce,
        })
    }
}

type AppendResult = Result<Ack, ClientError>;

/// Checks an export against the acknowledgements: seqs 0..n in order (so no
/// gap and no duplicate), no event nonce twice, and every acknowledged seq
/// present with the entry hash (RFC 6962 leaf hash of its line) and the event
/// the broker acknowledged. Returns the number of entries.
fn check_bundle(bundle: &Path, acks: &[Ack]) -> u64 {
    let lines = read_lines(bundle);
    let mut hashes = Vec::with_capacity(lines.len());
    let mut nonce_at = Vec::with_capacity(lines.len());
    let mut nonces = HashSet::new();
    for (i, line) in lines.iter().enumerate() {
        let e = Entry::parse_line(line).expect("entry line");
        assert_eq!(e.seq.0, i as u64, "line {i} holds seq {}", e.seq);
        let nonce = e.event.nonce.to_hex();
        assert!(
            nonces.insert(nonce.clone()),
            "event nonce {nonce} appears twice (again at seq {i})"
        );
        hashes.push(entry_hash(line).to_hex());
        nonce_at.push(nonce);
    }
    let mut seen = HashSet::new();
    for a in acks {
        assert!(seen.insert(a.seq), "seq {} acknowledged twice", a.seq);
        let i = usize::try_from(a.seq).unwrap();
        assert!(
            i < lines.len(),
            "acknowledged seq {} is missing: the export holds {} entries",
            a.seq,
            lines.len()
        );
        assert_eq!(
            hashes[i], a.hash,
            "entry hash of acknowledged seq {}",
            a.seq
        );
        assert_eq!(nonce_at[i], a.nonce, "event at acknowledged seq {}", a.seq);
    }
    lines.len() as u64
}

/// xorshift64*: kill timings that a printed seed reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

fn assert_no_panic(h: &Harness) {
    let log = std::fs::read_to_string(h.path().join("broker.log")).unwrap_or_default();
    if let Some(at) = log.find("panicked") {
        let from = log[..at].rfind('\n').map_or(0, |i| i + 1);
        panic!(
            "the broker panicked:\n{}",
            &log[from..(at + 2000).min(log.len())]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loop_loses_no_acknowledged_entry() {
    const APPENDERS: usize = 4;
    let cycles = env_u64("CUSTODY_CRASH_CYCLES").unwrap_or(20);
    let seed = env_u64("CUSTODY_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }) | 1;
    eprintln!("crash loop: {cycles} cycles, {APPENDERS} appenders, CUSTODY_CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let mut h = Harness::start_with(LIMITS).await;
    let c = h.client();
    let mut agents = Vec::new();
    for _ in 0..APPENDERS {
        agents.push(Agent::start(&h, &c).await);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let mut tasks = Vec::new();
    for (i, agent) in agents.into_iter().enumerate() {
        let (stop, acks, client) = (stop.clone(), acks.clone(), h.client());
        tasks.push(tokio::spawn(async move {
            // (refused while down or unavailable, refused otherwise)
            let (mut retried, mut unexpected) = (0u64, Vec::<String>::new());
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match agent
                    .append(&client, &[("appender", i.into()), ("n", n.into())])
                    .await
                {
                    Ok(a) => acks.lock().unwrap().push(a),
                    Err(e) => {
                        match &e {
                            ClientError::Transport { .. } => retried += 1,
                            ClientError::Api { status, .. } if *status >= 500 => retried += 1,
                            _ => unexpected.push(e.to_string()),
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (retried, unexpected)
        }));
    }

    let t0 = Instant::now();
    let mut per_cycle = Vec::new();
    let mut restart_time = Duration::ZERO;
    for _ in 0..cycles {
        let before = acks.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(rng.range(30, 300))).await;
        h.broker.take().unwrap().crash();
        per_cycle.push(acks.lock().unwrap().len() - before);
        let t = Instant::now();
        tokio::task::block_in_place(|| h.start_broker());
        restart_time += t.elapsed();
    }
    // The appenders reach the last broker too.
    let before = acks.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut retried, mut unexpected) = (0, Vec::new());
    for t in tasks {
        let (r, u) = t.await.unwrap();
        retried += r;
        unexpected.extend(u);
    }
    let acks = acks.lock().unwrap().clone();
    let after_last = acks.len() - before;
    let elapsed = t0.elapsed();

    let (code, v) = h.export_and_verify("bundle").await;
    assert_eq!(code, 0, "{v:#}");
    let entries = check_bundle(&h.path().join("bundle"), &acks);
    // Appends that were in flight at a kill: stored, never acknowledged.
    let unacked = entries.saturating_sub(acks.len() as u64 + APPENDERS as u64 + 1);
    eprintln!(
        "crash loop: {cycles} SIGKILLs in {elapsed:.1?} (restarts {:.1?} in total), \
         {} acknowledged appends ({:.1} per cycle, per cycle {per_cycle:?}, {after_last} after the last restart), \
         {retried} refused while down, {entries} entries exported ({unacked} stored but never acknowledged, \
         plus genesis and session starts)",
        restart_time,
        acks.len(),
        acks.len() as f64 / cycles.max(1) as f64,
    );
    assert!(
        unexpected.is_empty(),
        "appends refused for a reason other than the broker being down: {unexpected:#?}"
    );
    assert!(
        acks.len() as u64 >= cycles,
        "too few acknowledged appends to exercise anything: {} in {cycles} cycles",
        acks.len()
    );
    assert!(
        per_cycle.iter().filter(|n| **n > 0).count() * 2 >= per_cycle.len(),
        "most cycles must acknowledge appends before the kill: {per_cycle:?}"
    );
    assert_no_panic(&h);
}

/// A tmpfs mounted over the broker's data directory, for as long as the
/// harness lives. Dropping it kills the broker first (an open file keeps the
/// mount busy), then unmounts, even after a failed assertion.
struct Mounted {
    h: Harness,
    at: PathBuf,
}

impl Mounted {
    fn tmpfs(h: Harness, size: &str) -> Self {
        let at = h.data();
        std::fs::create_dir_all(&at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs on {} failed", at.display());
        Self { h, at }
    }

    /// `mount -o remount,<opt>`; the error output when it fails.
    fn remount(&self, opt: &str) -> Result<(), String> {
        let o = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.at)
            .output()
            .expect("run mount");
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(b) = self.h.broker.take() {
            b.crash();
        }
        let ok = Command::new("umount")
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Never leave a mount behind.
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The refusal a full or read-only ledger must give: 503 `ledger_unavailable`,
/// naming the OS error.
fn assert_unavailable(r: &AppendResult, why: &str) {
    match r {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!(*status, 503, "{code}: {message}");
            assert_eq!(code, "ledger_unavailable", "{message}");
            assert!(message.contains(why), "{message:?} does not say {why:?}");
        }
        other => panic!("expected 503 ledger_unavailable ({why}), got {other:?}"),
    }
}

/// Fills the file system with one file, to the last byte (ENOSPC).
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let e = loop {
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
    };
    assert_eq!(e.raw_os_error(), Some(28), "filling: {e}");
}

/// Appends `n` events that must all be acknowledged.
async fn append_ok(a: &Agent, c: &Client, n: usize, acks: &mut Vec<Ack>) {
    for i in 0..n {
        let r = a.append(c, &[("i", i.into())]).await;
        acks.push(r.unwrap_or_else(|e| panic!("append {i}: {e}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_and_read_only_data_dir() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let mut m = Mounted::tmpfs(Harness::prepare(LIMITS).await, "8m");
    m.h.start_broker();
    let c = m.h.client();
    let agent = Agent::start(&m.h, &c).await;
    let mut acks = Vec::new();
    append_ok(&agent, &c, 10, &mut acks).await;

    let filler = m.at.join("filler");
    fill(&filler);
    // A few lines may still fit in the segment's last, already allocated page.
    let mut fitted = 0;
    let refusal = loop {
        match agent.append(&c, &[("full", fitted.into())]).await {
            Ok(a) => {
                acks.push(a);
                fitted += 1;
                assert!(fitted < 64, "appends keep succeeding on a full disk");
            }
            Err(e) => break Err(e),
        }
    };
    eprintln!("full disk: {fitted} appends fitted in allocated space, then: {refusal:?}");
    assert_unavailable(&refusal, "No space left on device");
    for _ in 0..3 {
        assert_unavailable(
            &agent.append(&c, &[("full", true.into())]).await,
            "No space left on device",
        );
    }
    let health = c
        .health()
        .await
        .expect("the broker stays up on a full disk");
    // The index may lag behind the appends that fitted while the disk is full
    // (sled cannot write either): they are durable, and visible once it
    // catches up.
    eprintln!(
        "full disk: health sees {} of {} entries",
        health.entries,
        acks.len() + 2
    );
    assert!(health.entries <= acks.len() as u64 + 2, "{health:?}");

    // Space again: appends work at once, without a restart.
    std::fs::remove_file(&filler).unwrap();
    append_ok(&agent, &c, 10, &mut acks).await;
    // Readers (health, export, proofs) see every acknowledged entry again
    // once the store has reopened its index (at once, or within its retry
    // interval of about a second).
    let t = Instant::now();
    loop {
        let health = c.health().await.unwrap();
        if health.entries == acks.len() as u64 + 2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "readers still see {} of {} entries",
            health.entries,
            acks.len() + 2
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "full disk: readers caught up {:?} after the last append",
        t.elapsed()
    );
    let (code, v) = m.h.export_and_verify("bundle-full").await;
    assert_eq!(code, 0, "{v:#}");
    let entries = check_bundle(&m.h.path().join("bundle-full"), &acks);
    assert_eq!(
        entries,
        acks.len() as u64 + 2,
        "genesis + session start + acks"
    );

    // Read-only. Linux refuses to remount a file system read-only while a
    // process has a file on it open for writing (the segment, the locks,
    // sled's files), so a running broker cannot see its directory turn
    // read-only through `mount -o remount,ro`.
    match m.remount("ro") {
        Err(e) => {
            eprintln!("read-only: remount refused while the broker runs, as expected: {e}");
        }
        Ok(()) => {
            let r = agent.append(&c, &[("ro", true.into())]).await;
            assert_unavailable(&r, "Read-only file system");
            m.remount("rw").unwrap();
            append_ok(&agent, &c, 3, &mut acks).await;
        }
    }
    // Read-only while stopped: the broker refuses to start and says why.
    m.h.broker.take().unwrap().stop();
    m.remount("ro")
        .expect("remount ro once the broker is stopped");
    let mut child = Command::new(custody_tests::bin("custody"))
        .arg("serve")
        .arg("--config")
        .arg(m.h.config())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("custody serve kept running on a read-only data directory");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let o = child.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    eprintln!(
        "read-only: custody serve exited with {status}: {}",
        err.trim()
    );
    assert!(!status.success(), "{out}{err}");
    assert!(!out.contains("listening"), "{out}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Writable again: everything is still there and appends work.
    m.remount("rw").unwrap();
    m.h.start_broker();
    let c = m.h.client();
    append_ok(&agent, &c, 5, &mut acks).await;
    let (code, v) = m.h.export_and_verify("bundle-end").await;
    assert_eq!(code, 0, "{v:#}");
    let entries = check_bundle(&m.h.path().join("bundle-end"), &acks);
    assert_eq!(entries, acks.len() as u64 + 2);
    assert_no_panic(&m.h);
}

/// The broker's own sled database (`DATA/broker`: token accessors, ingest
/// tokens) has sticky I/O errors like the ledger index: once one of its writes
/// hits the full disk, every later operation on that handle fails. The broker
/// reopens it ([`custody_server::brokerdb`]), so mints and session starts
/// work again as soon as the disk has space, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_then_mint_and_session_start_recover() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let mut m = Mounted::tmpfs(Harness::prepare(LIMITS).await, "8m");
    m.h.start_broker();
    let c = m.h.client();
    let agent = Agent::start(&m.h, &c).await;
    let filler = m.at.join("filler");
    fill(&filler);
    // A few fit in allocated space; then refused (each token is minted, then
    // revoked since it cannot be recorded) until one of sled's writes fails.
    for i in 0..40 {
        match c.mint(&agent.session, "repo-read").await {
            Ok(_) => eprintln!("full disk: mint {i} fitted"),
            Err(e) => eprintln!("full disk: mint {i}: {e}"),
        }
    }
    std::fs::remove_file(&filler).unwrap();
    c.mint(&agent.session, "repo-read")
        .await
        .expect("mint once the disk has space again");
    Agent::start(&m.h, &c).await;
}
