//! Attestation reports: counts derived from the demo scenario itself, the
//! unverified path, signatures, and the HTML as a browser renders it.

use std::process::Command;
use std::sync::OnceLock;

use custody_cli::demo::{scenario, By, Step};
use custody_tests::{run, DemoRun};

fn demo() -> &'static DemoRun {
    static DEMO: OnceLock<DemoRun> = OnceLock::new();
    DEMO.get_or_init(DemoRun::new)
}

fn report_json(
    bundle: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> (i32, serde_json::Value) {
    let mut args = vec![
        "report",
        bundle.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = run("custody-verify", &args);
    let v = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    (o.status.code().unwrap_or(-1), v)
}

#[test]
fn report_counts_match_the_scenario() {
    let d = demo();
    let out = d.dir.path().join("report.json");
    let (code, r) = report_json(&d.bundle(), &out, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["verification"]["valid"], true);

    // Expected figures, from the scenario definition.
    let steps = scenario();
    let count = |f: &dyn Fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count() as u64;
    let by = |k: By| {
        count(
            &|s| matches!(s, Step::ToolCall { by, .. } if std::mem::discriminant(by) == std::mem::discriminant(&k)),
        )
    };
    let sessions = count(&|s| matches!(s, Step::Delegate { .. }));
    let human_direct = count(&|s| matches!(s, Step::Human { .. }));
    let human_approvals = by(By::Human);
    let revokes = count(&|s| matches!(s, Step::Revoke { .. }));
    let mints = count(&|s| matches!(s, Step::Mint { .. }));
    let refused = count(&|s| matches!(s, Step::RefusedAttempt { .. } | Step::RefusedMint { .. }));
    let tool_calls = count(&|s| matches!(s, Step::ToolCall { .. }));
    let results = count(&|s| matches!(s, Step::ToolResult { .. }));
    let telemetry = count(&|s| matches!(s, Step::Telemetry { .. }));
    let policy_denied = count(&|s| matches!(s, Step::PolicyDenied { .. }));
    let held_approved = count(&|s| matches!(s, Step::Held { approve: true, .. }));
    let held_refused = count(&|s| matches!(s, Step::Held { approve: false, .. }));
    let reviewed = by(By::AutoReview(""));

    let a = &r["activity"];
    // Every approval a tool call claims names the entry that backs it.
    assert_eq!(
        a["agent_approvals"]["human"],
        human_approvals + held_approved
    );
    assert_eq!(a["agent_approvals"]["policy"], by(By::Policy("")));
    assert_eq!(a["agent_approvals"]["auto_review"], reviewed);
    assert_eq!(a["agent_approvals"]["none"], by(By::Nobody));
    let o = &r["oversight"];
    assert_eq!(
        o["verified_approvals"]["human"],
        human_approvals + held_approved
    );
    assert_eq!(o["verified_approvals"]["auto_review"], reviewed);
    assert_eq!(o["verified_approvals"]["policy"], by(By::Policy("")));
    // Held calls: who decided each, how fast, and the one that ran.
    let held = o["held"].as_array().unwrap();
    assert_eq!(held.len() as u64, held_approved + held_refused + reviewed);
    for h in held {
        assert!(h["decision_ms"].as_i64().unwrap() >= 0, "{h}");
        match h["outcome"].as_str().unwrap() {
            "approved" => assert!(h["ran_seq"].is_u64(), "{h}"),
            "refused" => assert!(h["ran_seq"].is_null(), "{h}"),
            other => panic!("{other}: {h}"),
        }
    }
    assert_eq!(
        held.iter()
            .filter(|h| h["decided_as"] == "auto_review")
            .count() as u64,
        reviewed
    );
    assert_eq!(o["refusals"].as_array().unwrap().len() as u64, held_refused);
    // Counted by signer, as the rules accepted it. People: direct actions,
    // signed approvals and refusals, the admin's revocations.
    assert_eq!(
        a["by_kind"]["human"],
        human_direct + human_approvals + held_approved + held_refused + revokes
    );
    // The automated reviewer: a service identity.
    assert_eq!(a["by_kind"]["service"], reviewed);
    // Agent sessions: session starts, tool calls, results, credential
    // requests.
    assert_eq!(
        a["by_kind"]["agent"],
        sessions + tool_calls + held_approved + results + mints
    );
    assert_eq!(
        a["broker_attested"],
        telemetry * (custody_cli::demo::TELEMETRY_HUMAN + custody_cli::demo::TELEMETRY_AGENT)
    );
    // What the agent's telemetry says its user did is a claim, attested by
    // the ledger key, not a person's signed decision.
    let claims = a["claims"].as_array().unwrap();
    let telemetry_claim = claims
        .iter()
        .find(|c| c["claim"].as_str().unwrap().contains("agent telemetry"))
        .unwrap();
    assert_eq!(
        telemetry_claim["count"],
        telemetry * custody_cli::demo::TELEMETRY_HUMAN
    );
    // Approvals: the signed `approval` entries only.
    assert_eq!(
        a["human_decisions"]["approve"],
        human_approvals + held_approved
    );
    assert_eq!(a["human_decisions"]["deny"], held_refused);
    assert_eq!(a["policy_decisions"]["deny"], policy_denied + held_refused);
    assert_eq!(
        a["policy_decisions"]["approval_required"],
        held_approved + held_refused + reviewed
    );

    let mints_seen = r["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "credential.mint")
        .count() as u64;
    assert_eq!(mints_seen, mints);
    let ids = r["identities"].as_array().unwrap();
    assert_eq!(
        ids.iter().filter(|i| i["role"] == "session").count() as u64,
        sessions
    );
    let revs = r["oversight"]["revocations"].as_array().unwrap();
    assert_eq!(revs.len() as u64, revokes);
    assert_eq!(revs[0]["refused_after"], refused);
    assert_eq!(revs[0]["accepted_after"], 0);
    assert!(revs[0]["last_refusal_after_ms"].as_i64().unwrap() >= 0);
    assert_eq!(
        r["exceptions"]["denied"].as_array().unwrap().len() as u64,
        refused
    );
    assert_eq!(r["exceptions"]["payloads_redacted"], 1);

    let arts: Vec<&str> = r["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["article"].as_str().unwrap())
        .collect();
    assert_eq!(arts, vec!["12", "13", "14", "15", "19, 26(6)", "72"]);
    for a in r["articles"].as_array().unwrap() {
        assert!(
            ["met", "partial", "not_met", "not_applicable"]
                .contains(&a["status"].as_str().unwrap()),
            "{a}"
        );
        assert!(!a["cannot_prove"].as_str().unwrap().is_empty());
    }
    // A demo of a few seconds cannot show six months of retention.
    assert_eq!(r["articles"][4]["status"], "partial");
    assert_eq!(r["articles"][2]["status"], "met");
}

#[test]
fn tampered_bundle_gives_an_unverified_report_and_exit_1() {
    let d = demo();
    let dir = d.copy_bundle("tampered-for-report");
    let mut lines = custody_tests::read_lines(&dir);
    let mut e = custody_ledger::Entry::parse_line(&lines[3]).unwrap();
    e.event.details.insert("tool".into(), "Rm".into());
    lines[3] = e.to_line().unwrap();
    custody_tests::write_lines(&dir, &lines);
    for ext in ["json", "md", "html"] {
        let out = d.dir.path().join(format!("tampered.{ext}"));
        let o = run(
            "custody-verify",
            &[
                "report",
                dir.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(1), "{ext}");
        let text = std::fs::read_to_string(&out).unwrap();
        if ext == "json" {
            let r: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(r["verification"]["valid"], false);
            for a in r["articles"].as_array().unwrap() {
                assert_eq!(a["status"], "unverified");
            }
            let sig = r["verification"]["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "signatures")
                .unwrap()
                .clone();
            assert_eq!(sig["failing_seqs"], serde_json::json!([3]));
        } else {
            assert!(text.contains("does not verify"), "{ext}");
        }
    }
}

#[test]
fn signed_report_checks_and_any_edit_or_other_bundle_fails() {
    let d = demo();
    let key = d.dir.path().join("auditor.key");
    custody_identity::KeyPair::generate().save(&key).unwrap();
    let out = d.dir.path().join("signed.json");
    let o = run(
        "custody-verify",
        &[
            "report",
            d.bundle().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    let check = |p: &std::path::Path, b: &std::path::Path| {
        run(
            "custody-verify",
            &[
                "check-report",
                p.to_str().unwrap(),
                "--bundle",
                b.to_str().unwrap(),
            ],
        )
        .status
        .code()
    };
    assert_eq!(check(&out, &d.bundle()), Some(0));

    let env: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut st: serde_json::Value =
        serde_json::from_slice(&b64.decode(env["payload"].as_str().unwrap()).unwrap()).unwrap();
    // Edited payload, signature kept.
    st["predicate"]["activity"]["agent_approvals"]["human"] = 99.into();
    let mut edited = env.clone();
    edited["payload"] = b64.encode(serde_json::to_vec(&st).unwrap()).into();
    let p = d.dir.path().join("edited.json");
    std::fs::write(&p, serde_json::to_string(&edited).unwrap()).unwrap();
    assert_eq!(check(&p, &d.bundle()), Some(1));
    // Re-signed by the editor: the signature holds, the bundle does not match.
    let editor = custody_identity::KeyPair::generate();
    let report: custody_verifier::attest::Report =
        serde_json::from_value(st["predicate"].clone()).unwrap();
    let resigned = custody_verifier::dsse::sign(&report, &editor).unwrap();
    std::fs::write(&p, serde_json::to_string(&resigned).unwrap()).unwrap();
    assert_eq!(check(&p, &d.bundle()), Some(1));
    // The genuine report against a different bundle.
    let other = DemoRun::new();
    assert_eq!(check(&out, &other.bundle()), Some(1));
}

fn chromium() -> String {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(c).exists() {
            return c.to_string();
        }
    }
    panic!("Chromium is missing: run scripts/setup (it installs Debian's chromium package)");
}

#[test]
fn html_report_renders_in_headless_chromium() {
    let d = demo();
    let out = d.dir.path().join("report.html");
    let o = run(
        "custody-verify",
        &[
            "report",
            d.bundle().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    let html = std::fs::read_to_string(&out).unwrap();
    for bad in ["<script", "http://", "https://", "@import", "<link"] {
        assert!(
            !html.contains(bad),
            "the HTML must be self-contained, found {bad}"
        );
    }
    let profile = d.dir.path().join("chromium-profile");
    let o = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.display()),
            "--dump-dom",
            &format!("file://{}", out.display()),
        ])
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        dom.contains("id=\"summary\""),
        "no summary in the rendered DOM: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(dom.contains("VERIFIED"));
    assert!(dom.contains("<svg"), "timeline chart");
    for art in [
        "art-12",
        "art-13",
        "art-14",
        "art-15",
        "art-19266",
        "art-72",
    ] {
        assert!(
            dom.contains(&format!("id=\"{art}\"")),
            "article section {art} missing"
        );
    }
}
