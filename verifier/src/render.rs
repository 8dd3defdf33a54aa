//! Markdown and self-contained HTML renderings of a report. The HTML has no
//! external scripts, fonts or stylesheets: one file an auditor can open
//! anywhere, with the activity timeline as inline SVG.

use std::fmt::Write;

use crate::attest::Report;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn short(did: &str) -> String {
    match did.strip_prefix("did:key:") {
        Some(mb) if mb.len() > 16 => format!("did:key:{}…{}", &mb[..8], &mb[mb.len() - 6..]),
        _ => did.to_string(),
    }
}

fn verdict(r: &Report) -> &'static str {
    if r.verification.valid {
        "VERIFIED"
    } else {
        "NOT VERIFIED"
    }
}

/// How the activity split was counted, and what is only claimed.
fn attribution_note(r: &Report) -> String {
    let claims: Vec<String> = r
        .activity
        .claims
        .iter()
        .map(|c| format!("{} {} (attested by {})", c.count, c.claim, c.attested_by))
        .collect();
    format!(
        "Counted by who signed, as the ledger's rules accepted it (agent sessions, people, CI identities, the ledger key). Claimed, not proven by a person's signature: {}.",
        claims.join("; ")
    )
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# custody attestation report\n");
    if !r.verification.valid {
        let _ = writeln!(
            s,
            "> **The bundle does not verify. Every section below is unverified.**\n"
        );
        for c in r.verification.checks.iter().filter(|c| !c.ok) {
            let _ = writeln!(s, "> - `{}` fails at seq {:?}", c.name, c.failing_seqs);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## Summary\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| integrity | **{}** |", verdict(r));
    let _ = writeln!(
        s,
        "| ledger | `{}` (pinned: {}) |",
        r.verification.ledger, r.verification.ledger_key_pinned
    );
    let _ = writeln!(s, "| tree size | {} |", r.verification.tree_size);
    let _ = writeln!(s, "| root | `{}` |", r.verification.root);
    let _ = writeln!(
        s,
        "| period | {} to {} ({:.2} days) |",
        r.period.first.as_deref().unwrap_or("-"),
        r.period.last.as_deref().unwrap_or("-"),
        r.period.days
    );
    for (k, n) in &r.activity.by_kind {
        let _ = writeln!(s, "| {k} entries | {n} |");
    }
    let _ = writeln!(
        s,
        "\n## Checks\n\n| check | result | failing seqs |\n|---|---|---|"
    );
    for c in &r.verification.checks {
        let _ = writeln!(
            s,
            "| {} | {} | {:?} |",
            c.name,
            if c.ok { "ok" } else { "FAIL" },
            c.failing_seqs
        );
    }
    let _ = writeln!(s, "\n## Identities\n\n| DID | kind | role | entries | agent | delegated by | scopes | context |\n|---|---|---|---|---|---|---|---|");
    for i in &r.identities {
        let (a, d, sc, cx) = match &i.session {
            Some(x) => (
                x.agent.clone(),
                short(&x.delegated_by),
                x.scopes.join(", "),
                x.context.clone(),
            ),
            None => Default::default(),
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {a} | {d} | {sc} | {cx} |",
            short(&i.did),
            i.kind,
            i.role,
            i.entries
        );
    }
    let _ = writeln!(s, "\n## Activity\n\nAgent tool calls by approver:\n");
    for (k, n) in &r.activity.agent_approvals {
        let _ = writeln!(s, "- {k}: {n}");
    }
    let _ = writeln!(s, "\n{}\n", attribution_note(r));
    for (k, n) in &r.activity.policy_decisions {
        let _ = writeln!(s, "- pre-tool policy {k}: {n}");
    }
    let _ = writeln!(
        s,
        "\n## Agent commits\n\n| seq | commit | agent | session | repo | branch |\n|---|---|---|---|---|---|"
    );
    for c in &r.commits {
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | `{}` | {} | {} |",
            c.seq,
            c.commit,
            c.agent,
            short(&c.session),
            c.repo.as_deref().unwrap_or("-"),
            c.branch.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(
        s,
        "\n## Credentials\n\n| seq | action | subject | scope | TTL (s) |\n|---|---|---|---|---|"
    );
    for c in &r.credentials {
        let _ = writeln!(
            s,
            "| {} | {} | `{}` | {} | {} |",
            c.seq,
            c.action,
            short(&c.subject),
            c.scope.as_deref().unwrap_or("-"),
            c.ttl_seconds
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    let _ = writeln!(
        s,
        "\n## Oversight\n\nHuman approvals: {}, denials: {}.\n",
        r.oversight.approvals, r.oversight.denials
    );
    for rv in &r.oversight.revocations {
        let _ = writeln!(
            s,
            "- seq {}: `{}` revoked `{}` ({}); {} later attempt(s) refused, last {} ms after; {} accepted",
            rv.seq,
            short(&rv.admin),
            short(&rv.subject),
            rv.reason,
            rv.refused_after,
            rv.last_refusal_after_ms.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            rv.accepted_after
        );
    }
    let _ = writeln!(
        s,
        "\nVerified approvals (the entry each names checked): human {}, auto-review {}, policy {}; reported only by agent telemetry: {}.\n",
        r.oversight.verified_approvals.get("human").copied().unwrap_or(0),
        r.oversight.verified_approvals.get("auto_review").copied().unwrap_or(0),
        r.oversight.verified_approvals.get("policy").copied().unwrap_or(0),
        r.oversight.claimed_approvals.values().sum::<u64>()
    );
    for h in &r.oversight.held {
        let _ = writeln!(
            s,
            "- held at seq {}: {} call of `{}` by {} (needs {}): **{}**{}",
            h.seq,
            h.tool,
            short(&h.session),
            h.rules.join(", "),
            h.requires,
            h.outcome,
            match (&h.decided_by, h.decided_seq, h.decision_ms) {
                (Some(by), Some(d), Some(ms)) => format!(
                    " by `{}` ({}) at seq {d}, {ms} ms later{}",
                    short(by),
                    h.decided_as.as_deref().unwrap_or("-"),
                    h.ran_seq
                        .map(|r| format!("; ran at seq {r}"))
                        .unwrap_or_default()
                ),
                _ => String::new(),
            }
        );
    }
    for x in &r.oversight.escape_hatch {
        let _ = writeln!(
            s,
            "- escape hatch: `{}` ({}) in {} from seq {} to {} ({} to {})",
            short(&x.session),
            x.agent,
            x.mode,
            x.from_seq,
            x.to_seq,
            x.from,
            x.to
        );
    }
    let _ = writeln!(s, "\n## Exceptions\n");
    for d in &r.exceptions.denied {
        let _ = writeln!(
            s,
            "- seq {}: `{}` refused for {} ({})",
            d.seq,
            short(&d.actor),
            d.attempted,
            d.code
        );
    }
    let _ = writeln!(s, "- payloads redacted: {}", r.exceptions.payloads_redacted);
    let _ = writeln!(
        s,
        "- sessions without a recorded end: {}",
        r.exceptions.sessions_without_end.len()
    );
    let _ = writeln!(s, "\n## EU AI Act articles\n");
    for a in &r.articles {
        let _ = writeln!(
            s,
            "### Art. {} — {}: **{}**\n\n{}\n",
            a.article, a.title, a.status, a.reasoning
        );
        for e in &a.evidence {
            let _ = writeln!(s, "- {e}");
        }
        let _ = writeln!(s, "\n*What the ledger cannot prove:* {}\n", a.cannot_prove);
    }
    s
}

/// Stacked bars of entries per time bucket and signer.
fn timeline_svg(r: &Report) -> String {
    let b = &r.activity.timeline;
    if b.is_empty() {
        return String::new();
    }
    let (w, h, pad) = (720.0f64, 200.0f64, 30.0f64);
    let max = b
        .iter()
        .map(|x| x.agent + x.human + x.service + x.ledger)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let bw = (w - 2.0 * pad) / b.len() as f64;
    let mut s = format!(
        "<svg viewBox=\"0 0 {w} {}\" width=\"100%\" role=\"img\" aria-label=\"activity timeline: agent vs human\">",
        h + 30.0
    );
    let _ = write!(
        s,
        "<line x1=\"{pad}\" y1=\"{h}\" x2=\"{}\" y2=\"{h}\" stroke=\"#888\"/>",
        w - pad
    );
    for (i, x) in b.iter().enumerate() {
        let mut y = h;
        for (n, color, label) in [
            (x.agent, "#d9822b", "agent"),
            (x.human, "#2b6cd9", "human"),
            (x.service, "#6a9", "service"),
            (x.ledger, "#999", "ledger"),
        ] {
            if n == 0 {
                continue;
            }
            let bh = (h - pad) * n as f64 / max;
            y -= bh;
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{} {label}: {n}</title></rect>",
                pad + i as f64 * bw + 1.0,
                y,
                (bw - 2.0).max(1.0),
                bh,
                esc(&x.start)
            );
        }
    }
    let _ = write!(
        s,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"11\">{}</text>",
        h + 15.0,
        esc(&b[0].start)
    );
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
        w - pad,
        h + 15.0,
        esc(&b[b.len() - 1].start)
    );
    for (i, (c, l)) in [
        ("#d9822b", "agent"),
        ("#2b6cd9", "human"),
        ("#6a9", "service"),
        ("#999", "ledger"),
    ]
    .iter()
    .enumerate()
    {
        let x = pad + i as f64 * 90.0;
        let _ = write!(s, "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{l}</text>", h + 20.0, x + 14.0, h + 29.0);
    }
    s.push_str("</svg>");
    s
}

pub fn html(r: &Report) -> String {
    let mut s = String::new();
    let ok = r.verification.valid;
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>custody attestation report</title><style>\
body{{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1000px;color:#222;padding:0 1em}}\
h1{{margin-bottom:.2em}}table{{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}}th,td{{border:1px solid #ddd;padding:4px 8px;text-align:left;font-size:14px;vertical-align:top}}\
th{{background:#f4f4f4}}code{{font-size:12px}}.ok{{color:#1a7f37;font-weight:bold}}.bad{{color:#c00;font-weight:bold}}\
.banner{{padding:1em;border-radius:6px;margin:1em 0}}.banner.ok{{background:#e6f4ea}}.banner.bad{{background:#fde7e7}}\
.status{{display:inline-block;padding:1px 8px;border-radius:10px;font-size:13px;background:#eee}}.status.met{{background:#d4edda}}.status.partial{{background:#fff3cd}}.status.not_met,.status.unverified{{background:#f8d7da}}\
section.article{{border-left:4px solid #ccc;padding-left:1em;margin-bottom:1.5em}}</style></head><body>"
    );
    let _ = write!(s, "<h1>custody attestation report</h1>");
    let _ = write!(
        s,
        "<div id=\"summary\" class=\"banner {}\"><h2>Summary</h2><p>Integrity: <span class=\"{}\">{}</span>. Ledger <code>{}</code>{}, {} entries, root <code>{}</code>.</p><p>Period {} to {} ({:.2} days). Signed by agent sessions: {}, people: {}, CI identities: {}, the ledger key: {}.</p>",
        if ok { "ok" } else { "bad" },
        if ok { "ok" } else { "bad" },
        verdict(r),
        esc(&r.verification.ledger),
        if r.verification.ledger_key_pinned { " (pinned)" } else { " (not pinned)" },
        r.verification.tree_size,
        esc(&r.verification.root),
        esc(r.period.first.as_deref().unwrap_or("-")),
        esc(r.period.last.as_deref().unwrap_or("-")),
        r.period.days,
        r.activity.by_kind.get("agent").copied().unwrap_or(0),
        r.activity.by_kind.get("human").copied().unwrap_or(0),
        r.activity.by_kind.get("service").copied().unwrap_or(0),
        r.activity.by_kind.get("ledger").copied().unwrap_or(0),
    );
    if !ok {
        let _ = write!(s, "<p><strong>The bundle does not verify; every section below is unverified.</strong></p><ul>");
        for c in r.verification.checks.iter().filter(|c| !c.ok) {
            let _ = write!(
                s,
                "<li><code>{}</code> fails at seq {:?}</li>",
                esc(&c.name),
                c.failing_seqs
            );
        }
        let _ = write!(s, "</ul>");
    }
    let _ = write!(s, "</div>");
    let _ = write!(
        s,
        "<h2 id=\"timeline\">Activity over time: agent vs human</h2>{}",
        timeline_svg(r)
    );
    let _ = write!(
        s,
        "<h2>Checks</h2><table><tr><th>check</th><th>result</th><th>failing seqs</th></tr>"
    );
    for c in &r.verification.checks {
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{:?}</td></tr>",
            esc(&c.name),
            if c.ok { "ok" } else { "bad" },
            if c.ok { "ok" } else { "FAIL" },
            c.failing_seqs
        );
    }
    let _ = write!(s, "</table><h2 id=\"identities\">Identities</h2><table><tr><th>DID</th><th>kind</th><th>role</th><th>entries</th><th>agent</th><th>delegated by</th><th>scopes</th><th>context</th><th>valid</th></tr>");
    for i in &r.identities {
        let (a, d, sc, cx, v) = match &i.session {
            Some(x) => (
                x.agent.clone(),
                short(&x.delegated_by),
                x.scopes.join(", "),
                x.context.clone(),
                format!("{} – {}", x.not_before, x.not_after),
            ),
            None => Default::default(),
        };
        let _ = write!(
            s,
            "<tr><td><code title=\"{}\">{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&i.did),
            esc(&short(&i.did)),
            esc(&i.kind),
            esc(&i.role),
            i.entries,
            esc(&a),
            esc(&d),
            esc(&sc),
            esc(&cx),
            esc(&v)
        );
    }
    let _ = write!(s, "</table><h2>Approvals of agent actions</h2><table><tr><th>approved by</th><th>tool calls</th></tr>");
    for (k, n) in &r.activity.agent_approvals {
        let _ = write!(s, "<tr><td>{}</td><td>{n}</td></tr>", esc(k));
    }
    let _ = write!(s, "</table><p>{}</p>", esc(&attribution_note(r)));
    if !r.activity.policy_decisions.is_empty() {
        let _ = write!(
            s,
            "<table><tr><th>pre-tool policy</th><th>decisions</th></tr>"
        );
        for (k, n) in &r.activity.policy_decisions {
            let _ = write!(s, "<tr><td>{}</td><td>{n}</td></tr>", esc(k));
        }
        let _ = write!(s, "</table>");
    }
    let _ = write!(s, "<h2 id=\"commits\">Agent commits</h2><table><tr><th>seq</th><th>commit</th><th>agent</th><th>session</th><th>repo</th><th>branch</th><th>at</th></tr>");
    for c in &r.commits {
        let _ = write!(
            s,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.seq,
            esc(&c.commit),
            esc(&c.agent),
            esc(&short(&c.session)),
            esc(c.repo.as_deref().unwrap_or("-")),
            esc(c.branch.as_deref().unwrap_or("-")),
            esc(&c.at)
        );
    }
    let _ = write!(s, "</table><h2>Credentials</h2><table><tr><th>seq</th><th>action</th><th>subject</th><th>scope</th><th>TTL (s)</th><th>at</th></tr>");
    for c in &r.credentials {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.seq,
            esc(&c.action),
            esc(&short(&c.subject)),
            esc(c.scope.as_deref().unwrap_or("-")),
            c.ttl_seconds.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            esc(&c.at)
        );
    }
    let _ = write!(s, "</table><h2>Oversight</h2><p>Human approvals: {}, denials: {}.</p><table><tr><th>seq</th><th>admin</th><th>revoked</th><th>reason</th><th>refused after</th><th>last refusal (ms after)</th><th>accepted after</th></tr>", r.oversight.approvals, r.oversight.denials);
    for rv in &r.oversight.revocations {
        let _ = write!(
            s,
            "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            rv.seq,
            esc(&short(&rv.admin)),
            esc(&short(&rv.subject)),
            esc(&rv.reason),
            rv.refused_after,
            rv.last_refusal_after_ms.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            if rv.accepted_after == 0 { "ok" } else { "bad" },
            rv.accepted_after
        );
    }
    let _ = write!(s, "</table><h3>Held for approval</h3><table><tr><th>seq</th><th>tool</th><th>session</th><th>rules</th><th>needs</th><th>outcome</th><th>decided by</th><th>ms</th><th>ran at</th></tr>");
    for h in &r.oversight.held {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code> {}</td><td>{}</td><td>{}</td></tr>",
            h.seq,
            esc(&h.tool),
            esc(&short(&h.session)),
            esc(&h.rules.join(", ")),
            esc(&h.requires),
            esc(&h.outcome),
            esc(&h.decided_by.as_deref().map(short).unwrap_or_else(|| "-".into())),
            esc(h.decided_as.as_deref().unwrap_or("")),
            h.decision_ms.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            h.ran_seq.map(|m| m.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    let _ = write!(s, "</table><h3>Escape hatch</h3><table><tr><th>session</th><th>mode</th><th>seqs</th><th>from</th><th>to</th></tr>");
    for x in &r.oversight.escape_hatch {
        let _ = write!(
            s,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}..{}</td><td>{}</td><td>{}</td></tr>",
            esc(&short(&x.session)),
            esc(&x.mode),
            x.from_seq,
            x.to_seq,
            esc(&x.from),
            esc(&x.to)
        );
    }
    let _ = write!(s, "</table><h2>Exceptions</h2><table><tr><th>seq</th><th>actor</th><th>attempted</th><th>code</th></tr>");
    for d in &r.exceptions.denied {
        let _ = write!(
            s,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            d.seq,
            esc(&short(&d.actor)),
            esc(&d.attempted),
            esc(&d.code)
        );
    }
    let _ = write!(
        s,
        "</table><p>Payloads redacted: {}. Sessions without a recorded end: {}. Tool results without a matching call: {}.</p>",
        r.exceptions.payloads_redacted,
        r.exceptions.sessions_without_end.len(),
        r.exceptions.results_without_call
    );
    let _ = write!(s, "<h2 id=\"articles\">EU AI Act articles</h2>");
    for a in &r.articles {
        let id = a.article.replace([',', ' ', '(', ')'], "");
        let _ = write!(
            s,
            "<section class=\"article\" id=\"art-{}\"><h3>Art. {} — {} <span class=\"status {}\">{}</span></h3><p>{}</p>",
            esc(&id),
            esc(&a.article),
            esc(&a.title),
            esc(&a.status),
            esc(&a.status),
            esc(&a.reasoning)
        );
        if !a.evidence.is_empty() {
            let _ = write!(s, "<ul>");
            for e in &a.evidence {
                let _ = write!(s, "<li>{}</li>", esc(e));
            }
            let _ = write!(s, "</ul>");
        }
        let _ = write!(
            s,
            "<p><em>What the ledger cannot prove:</em> {}</p></section>",
            esc(&a.cannot_prove)
        );
    }
    let _ = write!(s, "<p style=\"color:#888;font-size:12px\">Generated offline by custody-verify from the export bundle; check it with <code>custody-verify check-report</code>.</p></body></html>");
    s
}
