"""The Agent Governance Toolkit's audit chain, on the events custody-bench uses.

Run by custody-bench with the project's .venv python; prints one JSON object.
Installed as `agent-governance-toolkit-core` (its audit log lives in the
`agentmesh.governance` package it ships). What is measured:

- append_per_s: `AuditLog(sink=FileAuditSink(...)).log(...)` for each event,
  the toolkit's persistent configuration: the in-memory Merkle chain plus an
  HMAC-SHA256-signed, hash-chained JSON line appended to a file (the sink
  opens the file per entry and never fsyncs).
- verify_per_s: `FileAuditSink.verify_integrity()`, which re-reads that file
  and checks every content hash, HMAC and chain link.
- append_inmemory_per_s / verify_chain_per_s: the same without the sink, and
  `AuditLog.verify_integrity()` over the in-memory chain.
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
import time
import warnings


def dids(n):
    # did:key strings of the same length as custody's (z6Mk + 44 base58 chars).
    out = []
    for k in range(n):
        h = hashlib.sha256(f"bench-key-{k}".encode()).hexdigest()
        out.append("did:key:z6Mk" + h[:44])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    with warnings.catch_warnings():
        # agentmesh/__init__ warns that the old `agentmesh-platform`
        # distribution is deprecated, even when it comes from the new one.
        warnings.simplefilter("ignore", DeprecationWarning)
        from agentmesh.governance.audit import AuditLog
        from agentmesh.governance.audit_backends import FileAuditSink

    version = importlib.metadata.version("agent-governance-toolkit-core")
    keys = dids(64)
    n = a.events
    events = [
        (keys[i % len(keys)], {"i": i, "tool": "Bash"}) for i in range(n)
    ]
    tmp = a.dir or tempfile.mkdtemp(prefix="agt-bench-")
    path = os.path.join(tmp, "audit.jsonl")
    if os.path.exists(path):
        os.remove(path)
    secret = os.urandom(32)

    sink = FileAuditSink(path, secret)
    log = AuditLog(sink=sink)
    t0 = time.perf_counter()
    for did, data in events:
        log.log("tool_invocation", did, "tool.call", data=data)
    append_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ok, err = sink.verify_integrity()
    verify_s = time.perf_counter() - t0
    if not ok:
        print(json.dumps({"error": f"FileAuditSink.verify_integrity failed: {err}"}))
        return 1
    lines = sum(1 for _ in open(path, encoding="utf-8"))
    if lines != n:
        print(json.dumps({"error": f"{lines} lines in the sink, expected {n}"}))
        return 1

    mem = AuditLog()
    t0 = time.perf_counter()
    for did, data in events:
        mem.log("tool_invocation", did, "tool.call", data=data)
    mem_append_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ok, err = mem.verify_integrity()
    mem_verify_s = time.perf_counter() - t0
    if not ok:
        print(json.dumps({"error": f"AuditLog.verify_integrity failed: {err}"}))
        return 1

    # The check must notice a change: alter one entry's data and re-verify.
    entries = mem._chain._entries
    entries[n // 2].data = {"i": -1, "tool": "Bash"}
    tampered_ok, _ = mem.verify_integrity()

    print(
        json.dumps(
            {
                "version": version,
                "python": sys.version.split()[0],
                "events": n,
                "append_per_s": round(n / append_s),
                "verify_per_s": round(n / verify_s),
                "append_inmemory_per_s": round(n / mem_append_s),
                "verify_chain_per_s": round(n / mem_verify_s),
                "file_bytes": os.path.getsize(path),
                "tamper_detected": not tampered_ok,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
