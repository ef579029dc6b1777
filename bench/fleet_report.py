#!/usr/bin/env python3
"""Turns bench/fleet's raw outputs into the markdown table: one column per repetition and the
median, archway's fleet against Distribution's proxies on S3.

usage: fleet_report.py RAW_DIR REPS S3_PULLS IMAGE_BYTES CLIENTS
"""

import os
import statistics
import sys

RAW = sys.argv[1]
REPS = int(sys.argv[2])
S3_PULLS = int(sys.argv[3])
IMAGE = int(sys.argv[4])
CLIENTS = int(sys.argv[5])


def read(name):
    path = os.path.join(RAW, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def pull(label):
    """Seconds of one pull, or None if skopeo failed or the image did not verify."""
    p, v = read(f"{label}.pull"), read(f"{label}.verified")
    if p is None or v is None or v.strip() != "1":
        return None
    rc, secs = p.split()[:2]
    return float(secs) if rc == "0" else None


def wall(prefix):
    """Seconds until every client was done, or None if any client failed."""
    w = read(f"{prefix}.wall")
    if w is None:
        return None
    if any(pull(f"{prefix}.client{j}") is None for j in range(CLIENTS)):
        return None
    return float(w)


def verified(prefix):
    return sum(1 for j in range(CLIENTS) if pull(f"{prefix}.client{j}") is not None)


def counts(name):
    """Upstream egress of one phase: body bytes, blob GETs, manifest GETs, HEADs, broken relays."""
    text = read(f"{name}.count")
    if text is None:
        return None
    c = {"bytes": 0, "blob_get": 0, "manifest_get": 0, "head": 0, "broken": 0}
    for line in text.splitlines():
        method, path, status, n = line.split()
        c["bytes"] += int(n)
        if status.startswith("!"):
            c["broken"] += 1
        if method == "HEAD":
            c["head"] += 1
        elif "/blobs/" in path:
            c["blob_get"] += 1
        elif "/manifests/" in path:
            c["manifest_get"] += 1
    return c


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def num(v, unit="", digits=2):
    if v is None:
        return "failed"
    return f"{v:.{digits}f}{unit}"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def row(label, values, fmt, median=True):
    cells = [fmt(v) for v in values]
    cells.append(fmt(med(values)) if median else "")
    print(f"| {label} | " + " | ".join(cells) + " |")


def reqs(c):
    if c is None:
        return "failed"
    s = f"{c['blob_get']} / {c['manifest_get']} / {c['head']}"
    return s + (f" ({c['broken']} broken)" if c["broken"] else "")


def main():
    reps = range(1, REPS + 1)
    head = " | ".join(f"rep {r}" for r in reps)
    print(f"| figure | {head} | median |")
    print("|---" * (REPS + 2) + "|")

    ac = [counts(f"{r}.archway") for r in reps]
    fc = [counts(f"{r}.flat") for r in reps]
    dc = [counts(f"{r}.dist") for r in reps]
    xc = [counts(f"{r}.direct") for r in reps]
    up = lambda c: None if c is None else c["bytes"] / IMAGE  # noqa: E731
    row("**upstream bytes ÷ image bytes, archway fleet** (goal 1.0)", [up(c) for c in ac], num)
    row("upstream bytes ÷ image bytes, archway replicas alone (clients round-robin)", [up(c) for c in fc], num)
    row("**upstream bytes ÷ image bytes, Distribution ×3 on S3**", [up(c) for c in dc], num)
    row("upstream bytes ÷ image bytes, one direct pull (the counter's check)", [up(c) for c in xc], num)
    for name, cs in (("archway", ac), ("archway alone", fc), ("Distribution", dc)):
        cells = " | ".join(reqs(c) for c in cs)
        print(f"| upstream blob GETs / manifest GETs / HEADs, {name} | {cells} | |")

    direct = [med([pull(f"{r}.direct"), pull(f"{r}.direct2")]) for r in reps]
    allw = [wall(f"{r}.directall") for r in reps]
    aw = [wall(f"{r}.archway") for r in reps]
    fw = [wall(f"{r}.flat") for r in reps]
    dw = [wall(f"{r}.dist") for r in reps]
    secs = lambda v: num(v, " s")  # noqa: E731
    times = lambda v: num(v, "×")  # noqa: E731
    row("one direct pull from upstream (mean of one at the start and one at the end)", direct, secs)
    row(f"{CLIENTS} clients straight from upstream at once (the clients' own cost; ÷ direct)", [ratio(a, d) for a, d in zip(allw, direct)], times)
    row(f"**all {CLIENTS} clients done, archway** (÷ direct)", [ratio(a, d) for a, d in zip(aw, direct)], times)
    row(f"all {CLIENTS} clients done, archway", aw, secs)
    row(f"all {CLIENTS} clients done, archway alone (÷ direct)", [ratio(a, d) for a, d in zip(fw, direct)], times)
    row(f"all {CLIENTS} clients done, archway alone", fw, secs)
    row(f"**all {CLIENTS} clients done, Distribution** (÷ direct)", [ratio(a, d) for a, d in zip(dw, direct)], times)
    row(f"all {CLIENTS} clients done, Distribution", dw, secs)
    for name, prefix in (("archway", "archway"), ("archway alone", "flat"), ("Distribution", "dist")):
        cells = " | ".join(f"{verified(f'{r}.{prefix}')}/{CLIENTS}" for r in reps)
        print(f"| clients whose image verified, {name} | {cells} | |")

    s3 = [med([pull(f"{r}.s3read{i}") for i in range(1, S3_PULLS + 1)]) for r in reps]
    l1 = [med([pull(f"{r}.l1hit{i}") for i in range(1, S3_PULLS + 1)]) for r in reps]
    row("cached pull, archway replica with an empty L1 (S3 read)", s3, secs)
    row("cached pull, the same replica again (L1 hit)", l1, secs)
    row("**empty L1 ÷ L1 hit**", [ratio(a, b) for a, b in zip(s3, l1)], times)
    s3up = []
    for r in reps:
        cs = [counts(f"{r}.s3read{i}") for i in range(1, S3_PULLS + 1)]
        s3up.append(None if any(c is None for c in cs) else sum(c["bytes"] for c in cs) / IMAGE)
    row("upstream bytes ÷ image bytes during those pulls", s3up, num)
    dcached = [pull(f"{r}.distcached") for r in reps]
    row("cached pull, a Distribution replica (from S3; it has no L1)", dcached, secs)
    row("the same ÷ archway's L1 hit", [ratio(a, b) for a, b in zip(dcached, l1)], times)

    for name, prefix in (("archway", "archway"), ("archway alone", "flat")):
        fills = [(read(f"{r}.{prefix}.fills") or "").strip() or "?" for r in reps]
        print(f"| fills by outcome (`archway_fleet_fills_total`), {name} | {' | '.join(fills)} | |")


if __name__ == "__main__":
    main()
