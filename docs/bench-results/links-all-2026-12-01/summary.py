#!/usr/bin/env python3
"""Collects the per-link "Targets on this link" tables of run.sh's reports into one table:
n2p time / ssh-ng time per workload (median of the per-round ratios, the worst round in
brackets), the W1 share of the link rate, the warm ping above `direct`, and the mesh's W1
against ssh-ng.

usage: summary.py [DIR...]: each DIR (a report directory named `[row-]LINK-LOSS`) replaces
that link's report of run.sh, e.g. a row rerun with a later build."""
import pathlib, re, sys

here = pathlib.Path(__file__).parent
override = {pathlib.Path(d).name.removeprefix("row-"): pathlib.Path(d) for d in sys.argv[1:]}
links = ["lan-1ms-1gbit", "wan-30ms-100mbit", "far-120ms-20mbit"]
losses = ["0pct", "0.5pct", "2pct"]
cols = ["W1", "W2", "W3", "W4", "ping", "P1", "P2", "P3"]
print("| link | " + " | ".join(cols) + " | W1 share of the rate | warm ping above `direct` | mesh W1 / ssh-ng | targets missed |")
print("|" + "---|" * (len(cols) + 5))
for link in links:
    for loss in losses:
        f = override.get(f"{link}-{loss}", here / f"{link}-{loss}") / "results.md"
        if not f.exists():
            continue
        text = f.read_text()
        cells, missed = {}, []
        for line in text.split("### Targets on this link")[-1].splitlines():
            m = re.match(r"\| (.+?) \| (.+?) \| (.+?) \| (.*?) \|$", line)
            if not m or m.group(1) in ("target", "---"):
                continue
            name, measured, verdict = m.group(1), m.group(3), m.group(4)
            mark = "" if verdict == "met" else " ✗"
            key = name.split(":")[0]
            if "share of the link rate" in name:
                key = "rate"
            elif name.startswith("warm"):
                key = "ping+"
            ratio = re.match(r"([0-9.]+×) \[[0-9.]+–([0-9.]+)\]", measured)
            cells[key] = (f"{ratio.group(1)} (≤ {ratio.group(2)}×)" if ratio else measured) + mark
            if verdict != "met":
                missed.append(key)
        mesh = re.search(r"\| W1 \| [^|]+\| [^|]+\| ([0-9.]+×) \[", text.split("Against ssh-ng and the link rate")[1])
        row = [cells.get(c, "–") for c in cols] + [cells.get("rate", "–"), cells.get("ping+", "–"), mesh.group(1) if mesh else "–", ", ".join(missed) or "none"]
        rtt = re.search(r"(\d+)ms-(\d+\w+)", link)
        print(f"| {rtt.group(1)} ms, {rtt.group(2).replace('mbit', ' Mbit/s').replace('gbit', ' Gbit/s')}, {loss.replace('pct', ' %')} | " + " | ".join(row) + " |")
