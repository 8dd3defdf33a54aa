//! Faults with brokers on PostgreSQL. A "kill" is SIGKILL of the process
//! and everything it forked.
//!
//! - brokers SIGKILLed under load, one after another: no acknowledged entry
//!   is lost and the others keep serving (`CUSTODY_PG_BROKER_KILLS`, 10 by
//!   default);
//! - PostgreSQL SIGKILLed under load, then restarted: every acknowledged
//!   entry is there;
//! - PostgreSQL unreachable: appends answer 503 naming the cause, and
//!   service resumes by itself when it returns;
//! - a synchronous standby promoted after the primary is killed: brokers
//!   reconnect by themselves and no acknowledged entry is missing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custody_agent::client::{session_event, Client, ClientError};
use custody_agent::sessionfile::SessionFile;
use custody_ledger::{actions, entry_hash};
use custody_tests::cluster::{eventually, Cluster};
use custody_tests::read_lines;

/// An append a broker acknowledged: what the ledger promised to keep.
#[derive(Clone, Debug)]
struct Ack {
    seq: u64,
    hash: String,
}

async fn append(c: &Client, s: &SessionFile, n: u64) -> Result<Ack, ClientError> {
    let key = s.key().unwrap();
    let mut ev = session_event(s, actions::TOOL_CALL).unwrap();
    ev.details.insert("tool".into(), "Bash".into());
    ev.details.insert("n".into(), n.into());
    let signed = ev.sign(&key).unwrap();
    c.log_as(&key, signed, None).await.map(|a| Ack {
        seq: a.seq,
        hash: a.hash,
    })
}

/// Appenders spread over the brokers until stopped; what was acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(c: &Cluster, agents: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let n = c.brokers.len();
        let mut tasks = Vec::new();
        for i in 0..agents {
            let s = c.session(i % n, "ci").await;
            let clients: Vec<Client> = (0..n).map(|b| c.client(b)).collect();
            let (stop, acks) = (stop.clone(), acks.clone());
            tasks.push(tokio::spawn(async move {
                let mut k = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let b = (i + k as usize) % clients.len();
                    match append(&clients[b], &s, k).await {
                        Ok(a) => acks.lock().unwrap().push(a),
                        // A dead broker or database: the client would retry.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                    k += 1;
                }
            }));
        }
        Self { stop, acks, tasks }
    }

    async fn finish(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acks = self.acks.lock().unwrap().clone();
        acks
    }
}

/// Exports through broker `i`, verifies, and checks every acknowledged
/// entry is in it, byte for byte (its hash at its seq).
async fn assert_all_kept(c: &Cluster, i: usize, acks: &[Ack], name: &str) {
    let (code, v) = c.export_and_verify(i, name).await;
    assert_eq!(code, 0, "{v:#}");
    let lines = read_lines(&c.path().join(name));
    for a in acks {
        let line = lines
            .get(a.seq as usize)
            .unwrap_or_else(|| panic!("acknowledged entry {} is missing", a.seq));
        assert_eq!(
            entry_hash(line).to_hex(),
            a.hash,
            "acknowledged entry {} differs",
            a.seq
        );
    }
    let mut seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    seqs.sort();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "a seq was acknowledged twice");
}

fn kills() -> usize {
    std::env::var("CUSTODY_PG_BROKER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brokers_killed_under_load_lose_no_acknowledged_entry() {
    let mut c = Cluster::start(3).await;
    let load = Load::start(&c, 6).await;
    let probe = c.session(0, "ci").await;
    for cycle in 0..kills() {
        tokio::time::sleep(Duration::from_millis(150 + 37 * (cycle as u64 % 5))).await;
        let victim = cycle % 3;
        c.kill_broker(victim);
        // The others keep serving while it is down.
        for other in (0..3).filter(|b| *b != victim) {
            append(&c.client(other), &probe, cycle as u64)
                .await
                .unwrap_or_else(|e| panic!("broker {other} with {victim} killed: {e}"));
        }
        c.start_broker(victim);
    }
    let acks = load.finish().await;
    assert!(acks.len() > 50, "too little load: {}", acks.len());
    assert_all_kept(&c, 1, &acks, "bundle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_killed_under_load_keeps_every_acknowledged_entry() {
    let mut c = Cluster::start(2).await;
    let load = Load::start(&c, 6).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.pg.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.pg.restart().await.expect("postgres restarts");
    // Service resumes by itself: acknowledgements continue.
    let before = load.acks.lock().unwrap().len();
    let acks = load.acks.clone();
    let resumed = eventually(Duration::from_secs(30), || {
        let acks = acks.clone();
        async move { acks.lock().unwrap().len() > before + 20 }
    })
    .await;
    assert!(resumed, "appends did not resume after PostgreSQL came back");
    let acks = load.finish().await;
    assert_all_kept(&c, 0, &acks, "bundle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_unreachable_answers_503_and_service_resumes() {
    let mut c = Cluster::start(2).await;
    let s = c.session(0, "chat").await;
    let before = append(&c.client(1), &s, 0).await.expect("an append");
    c.pg.stop();
    for b in 0..2 {
        match append(&c.client(b), &s, 1).await {
            Err(ClientError::Api {
                status,
                code,
                message,
            }) => {
                assert_eq!(status, 503, "{code}: {message}");
                assert_eq!(code, "ledger_unavailable");
                assert!(message.contains("ledger database"), "{message}");
                assert!(!message.contains(c.pg.password()), "{message}");
            }
            other => panic!("broker {b} answered {other:?}"),
        }
    }
    c.pg.restart().await.expect("postgres restarts");
    let cl = c.client(1);
    let back = eventually(Duration::from_secs(30), || async {
        append(&cl, &s, 2).await.is_ok()
    })
    .await;
    assert!(back, "appends did not resume by themselves");
    append(&c.client(0), &s, 3)
        .await
        .expect("both brokers resume");
    assert_all_kept(&c, 0, &[before], "bundle").await;
    assert!(!c.logs().contains(c.pg.password()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_synchronous_standby_has_every_acknowledged_entry() {
    let mut c = Cluster::with_standby(2).await;
    let load = Load::start(&c, 4).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.pg.kill();
    let standby = c.standby.as_ref().expect("a standby");
    standby.promote().await.expect("promotion");
    // The brokers' URL names both servers: they reconnect to the one that
    // accepts writes now.
    let before = load.acks.lock().unwrap().len();
    let acks = load.acks.clone();
    let resumed = eventually(Duration::from_secs(30), || {
        let acks = acks.clone();
        async move { acks.lock().unwrap().len() > before + 20 }
    })
    .await;
    assert!(resumed, "appends did not resume on the promoted standby");
    let acks = load.finish().await;
    assert_all_kept(&c, 1, &acks, "bundle").await;
}
