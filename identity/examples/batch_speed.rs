//! Per-signature cost of strict single verification and of batch
//! verification at several batch sizes, on one thread, interleaved in rounds.
//! `cargo run --release -p custody-identity --example batch_speed [ROUNDS]`

use custody_identity::batch::{verify_batch_strict, BatchItem, TorsionFreeKeys};
use custody_identity::{KeyPair, PublicKey, Signature};

/// CPU time this thread has run, in seconds (scheduler statistics, ns):
/// less disturbed than wall time by other processes on a shared machine.
fn cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e9
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let n = 8192;
    // One signer, as in a session's ledger; and 64 signers.
    for signers in [1usize, 64] {
        let keys: Vec<KeyPair> = (0..signers).map(|_| KeyPair::generate()).collect();
        let v: Vec<(PublicKey, Vec<u8>, Signature)> = (0..n)
            .map(|i| {
                let k = &keys[i % signers];
                let msg = format!(
                    "custody/event/v1\n{{\"action\":\"tool.call\",\"i\":{i},\"padding\":\"{}\"}}",
                    "x".repeat(300)
                )
                .into_bytes();
                let sig = k.sign(&msg);
                (k.public(), msg, sig)
            })
            .collect();
        for round in 0..rounds {
            let mut line = format!("signers {signers:>2} round {round}:");
            let t = cpu();
            for (k, m, s) in &v {
                k.verify(m, s).unwrap();
            }
            let strict = (cpu() - t) * 1e6 / n as f64;
            line += &format!(" strict {strict:.1}us");
            for size in [32usize, 64, 128, 256, 512, 1024] {
                let mut tk = TorsionFreeKeys::default();
                let t = cpu();
                for c in v.chunks(size) {
                    let items: Vec<BatchItem<'_>> = c
                        .iter()
                        .map(|(key, msg, sig)| BatchItem { key, msg, sig })
                        .collect();
                    verify_batch_strict(&items, &mut tk).unwrap();
                }
                let us = (cpu() - t) * 1e6 / n as f64;
                line += &format!(" b{size} {us:.1}us ({:.2}x)", strict / us);
            }
            println!("{line}");
        }
    }
}
