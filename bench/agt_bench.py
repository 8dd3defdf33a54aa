"""The Agent Governance Toolkit's audit chain, on the events custody-bench uses.

Run by custody-bench with the project's .venv python; prints one JSON object.
Installed as `agent-governance-toolkit-core` (its audit log lives in the
`agentmesh.governance` package it ships). Every mode logs the same events
through the toolkit's own API; each entry is HMAC-SHA256-signed and
hash-chained by the toolkit, as the product does. What is measured:

- append_single_per_s: one thread, one `AuditLog.log()` per event, with
  `FileAuditSink` (the toolkit's persistent sink: it opens the file per entry
  and never fsyncs);
- append_single_fsync_per_s: the same with an fsync of the file after each
  entry, added by this harness (what "durable" costs the toolkit);
- append_threads_per_s: `--threads` Python threads calling `log()`
  concurrently, one event per call, into one FileAuditSink (the toolkit's own
  lock serializes them; the GIL too);
- append_batch_per_s: entries built by `AuditLog.log()` in memory, then
  written `--batch` at a time with `FileAuditSink.write_batch()`;
- verify_per_s: `FileAuditSink.verify_integrity()` over the single-thread
  file (re-reads it and checks every content hash, HMAC and chain link);
- append_inmemory_per_s / verify_chain_per_s: no sink; and
  `AuditLog.verify_integrity()` over the in-memory chain (hashes only).

Pin the process to one core with `taskset` from the caller to compare per core.
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
import threading
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
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    with warnings.catch_warnings():
        # agentmesh/__init__ warns that the old `agentmesh-platform`
        # distribution is deprecated, even when it comes from the new one.
        warnings.simplefilter("ignore", DeprecationWarning)
        from agentmesh.governance.audit import AuditLog
        from agentmesh.governance.audit_backends import FileAuditSink

    class FsyncFileAuditSink(FileAuditSink):
        """FileAuditSink with the file fsynced after every entry."""

        def _append_line(self, signed):
            line = json.dumps(signed.to_dict(), sort_keys=True, default=str)
            with open(self._path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    version = importlib.metadata.version("agent-governance-toolkit-core")
    keys = dids(64)
    n = a.events
    events = [(keys[i % len(keys)], {"i": i, "tool": "Bash"}) for i in range(n)]
    tmp = a.dir or tempfile.mkdtemp(prefix="agt-bench-")
    secret = os.urandom(32)

    def fresh(name):
        p = os.path.join(tmp, name)
        if os.path.exists(p):
            os.remove(p)
        return p

    # One thread, one event per call.
    path = fresh("single.jsonl")
    sink = FileAuditSink(path, secret)
    log = AuditLog(sink=sink)
    t0 = time.perf_counter()
    for did, data in events:
        log.log("tool_invocation", did, "tool.call", data=data)
    single_s = time.perf_counter() - t0

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

    # The same, durable: fsync after each entry. Fewer events: it is slow.
    n_fsync = max(1, n // 10)
    fsink = FsyncFileAuditSink(fresh("fsync.jsonl"), secret)
    flog = AuditLog(sink=fsink)
    t0 = time.perf_counter()
    for did, data in events[:n_fsync]:
        flog.log("tool_invocation", did, "tool.call", data=data)
    fsync_s = time.perf_counter() - t0

    # Many callers, one event per call.
    tsink = FileAuditSink(fresh("threads.jsonl"), secret)
    tlog = AuditLog(sink=tsink)
    share = [events[i :: a.threads] for i in range(a.threads)]

    def caller(mine):
        for did, data in mine:
            tlog.log("tool_invocation", did, "tool.call", data=data)

    workers = [threading.Thread(target=caller, args=(s,)) for s in share]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    threads_s = time.perf_counter() - t0
    ok, err = tsink.verify_integrity()
    if not ok:
        print(json.dumps({"error": f"threaded sink does not verify: {err}"}))
        return 1

    # Batches: entries made in memory, written `batch` at a time.
    bsink = FileAuditSink(fresh("batch.jsonl"), secret)
    blog = AuditLog()
    t0 = time.perf_counter()
    pending = []
    for did, data in events:
        pending.append(blog.log("tool_invocation", did, "tool.call", data=data))
        if len(pending) == a.batch:
            bsink.write_batch(pending)
            pending = []
    if pending:
        bsink.write_batch(pending)
    batch_s = time.perf_counter() - t0

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
                "cpus": len(os.sched_getaffinity(0)),
                "append_per_s": round(n / single_s),
                "append_single_per_s": round(n / single_s),
                "append_single_fsync_per_s": round(n_fsync / fsync_s),
                "append_threads_per_s": round(n / threads_s),
                "append_batch_per_s": round(n / batch_s),
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
