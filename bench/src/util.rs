//! Helpers shared by the benchmarks: test events, percentiles, rounding, and
//! running a child process while polling its peak memory.

use std::time::{Duration, Instant};

use custody_identity::KeyPair;
use custody_ledger::{ActionType, ActorKind, Event, SignedEvent};
use serde_json::{Map, Value};

/// The results being collected: key → figure.
pub type Results = Map<String, Value>;

/// `n` `tool.call` events by 64 human keys, signed (the benchmarks' event shape).
pub fn events(n: usize) -> Vec<SignedEvent> {
    let keys: Vec<KeyPair> = (0..64).map(|_| KeyPair::generate()).collect();
    (0..n)
        .map(|i| {
            let k = &keys[i % keys.len()];
            tool_call(k, ActorKind::Human, i).sign(k).expect("sign")
        })
        .collect()
}

/// The benchmark event: a `tool.call` with details `{i, tool: "Bash"}`.
pub fn tool_call(k: &KeyPair, kind: ActorKind, i: usize) -> Event {
    let mut e = Event::new(k.did(), kind, ActionType::new("tool.call").expect("valid"));
    e.details.insert("i".into(), i.into());
    e.details.insert("tool".into(), "Bash".into());
    e
}

/// The p-quantile of sorted latencies, in milliseconds to 3 decimals.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    round(pick(sorted, p).as_secs_f64() * 1e3, 3)
}

/// The p-quantile of sorted latencies, in microseconds to 2 decimals.
pub fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    round(pick(sorted, p).as_secs_f64() * 1e6, 2)
}

fn pick(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `x` rounded to `places` decimals.
pub fn round(x: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (x * m).round() / m
}

/// `a / b` to 2 decimals (0 when `b` is 0).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        round(a / b, 2)
    }
}

/// Runs a child to completion, polling its peak RSS (VmHWM) from /proc.
/// Returns its status, the peak in MB and the wall time.
pub fn run_with_peak_rss(
    cmd: &mut std::process::Command,
) -> anyhow::Result<(std::process::ExitStatus, f64, Duration)> {
    let t0 = Instant::now();
    let mut child = cmd.stdout(std::process::Stdio::null()).spawn()?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path) {
            for l in s.lines() {
                if let Some(v) = l.strip_prefix("VmHWM:") {
                    let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak_kb = peak_kb.max(kb);
                }
            }
        }
        if let Some(st) = child.try_wait()? {
            return Ok((st, peak_kb as f64 / 1024.0, t0.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `custody-verify` binary next to this one.
pub fn verifier_exe() -> anyhow::Result<std::path::PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("custody-verify"))
}

/// Runs `custody-verify verify BUNDLE --ledger-key DID`; fails unless it says valid.
/// Returns (peak RSS in MB, wall time).
pub fn run_verifier(bundle: &std::path::Path, ledger: &str) -> anyhow::Result<(f64, Duration)> {
    use anyhow::Context as _;
    let verifier = verifier_exe()?;
    let (status, peak_mb, took) = run_with_peak_rss(
        std::process::Command::new(&verifier)
            .arg("verify")
            .arg(bundle)
            .arg("--ledger-key")
            .arg(ledger),
    )
    .with_context(|| format!("running {}", verifier.display()))?;
    anyhow::ensure!(status.success(), "the benchmark bundle did not verify");
    Ok((peak_mb, took))
}

/// CPU time (user + system) this process has used, in seconds.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here,
    // in clock ticks: USER_HZ, which Linux fixes at 100 for user space.
    (ticks(11) + ticks(12)) / 100.0
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1)
}

/// CPU seconds (user + system) each live process of the trees rooted at
/// `roots` has used so far, by PID (from /proc).
pub fn cpu_of_trees(roots: &[u32]) -> std::collections::HashMap<u32, f64> {
    let mut parent = std::collections::HashMap::new();
    let mut ticks = std::collections::HashMap::new();
    if let Ok(items) = std::fs::read_dir("/proc") {
        for item in items.flatten() {
            let Ok(pid) = item.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(item.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid …`; comm may hold spaces.
            let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            parent.insert(pid, num(1) as u32);
            // utime, stime: clock ticks of USER_HZ = 100.
            ticks.insert(pid, (num(11) + num(12)) / 100.0);
        }
    }
    let mut out = std::collections::HashMap::new();
    for (&pid, &t) in &ticks {
        let mut p = pid;
        // Walk up to a root (or init).
        for _ in 0..64 {
            if roots.contains(&p) {
                out.insert(pid, t);
                break;
            }
            match parent.get(&p) {
                Some(&pp) if pp > 1 => p = pp,
                _ => break,
            }
        }
    }
    out
}

/// CPU seconds the trees of `roots` used between two [`cpu_of_trees`]
/// snapshots (a process born in between counts from zero).
pub fn cpu_between(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(pid, t)| t - before.get(pid).copied().unwrap_or(0.0))
        .filter(|d| *d > 0.0)
        .sum()
}
