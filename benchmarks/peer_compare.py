"""`make bench-peers`: circuitbench against the real peer libraries, side by side, in rounds.

Every piece of work runs in its own process (circuitbench's in this venv, the peers' in
benchmarks/peers/.venv, which never imports circuitbench) on the same exported weights, token ids,
counterfactuals and metric (benchmarks/peer_export.py). Each round runs every tool once, in an
order rotated from round to round, and measures a bare HF forward of the batch: forward-equivalents
are a job's time over that round's bare forward. The table gives min and median over rounds, the
load average around each job, agreement with circuitbench where the definitions match, and the
goals of issue 15 with ✓/✗ (ratios are medians of the per-round ratios).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
from common import ac_name  # noqa: E402  (the peers' shared module: no auto-circuit import)
from peer_export import EDGE_SAMPLE, export  # noqa: E402

CB, TL2, AC = "circuitbench", "TransformerLens 2.x", "auto-circuit"
ONCE = {(AC, "exact_heads")}  # informative only (no goal) and slow: first round only
# (tool, work, script): the order of one round before rotation
JOBS = [
    (CB, "bare", "peer_circuitbench.py"),
    (CB, "exact", "peer_circuitbench.py"),
    (TL2, "exact", "peers/tl2.py"),
    (CB, "attribution", "peer_circuitbench.py"),
    (TL2, "attribution", "peers/tl2.py"),
    (AC, "eap", "peers/autocircuit.py"),
    (CB, "eval", "peer_circuitbench.py"),
    (AC, "exact_heads", "peers/autocircuit.py"),
    (AC, "exact_edges", "peers/autocircuit.py"),
    (CB, "eap", "peer_circuitbench.py"),
    (CB, "eap_ig", "peer_circuitbench.py"),
    (CB, "edge_patching", "peer_circuitbench.py"),
]


def run_job(tool: str, work: str, script: str, root: Path, out: Path, peers_python: str, threads: int) -> dict:
    python = sys.executable if tool == CB else peers_python
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "BENCH_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONWARNINGS": "ignore"}
    if tool == CB:
        env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    else:
        env.pop("PYTHONPATH", None)  # the peers' venv never sees circuitbench
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([python, str(HERE / script), str(root), work, str(out)], env=env, capture_output=True,
                          text=True, cwd=HERE / ("peers" if tool != CB else "."))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return {"error": f"exit {proc.returncode}: {tail}", "wall": wall}
    record = json.loads(out.read_text())
    record.update(wall=wall, load=[load_before, os.getloadavg()[0]])
    out.write_text(json.dumps(record))
    return record


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(np.asarray(a, dtype=float).ravel()))
    rb = np.argsort(np.argsort(np.asarray(b, dtype=float).ravel()))
    return float(np.corrcoef(ra, rb)[0, 1])


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))))


def fmt_s(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f}"


class Results:
    def __init__(self, rounds: list[dict[tuple[str, str], dict]]):
        self.rounds = rounds

    def ok(self, tool: str, work: str) -> list[dict]:
        return [r[(tool, work)] for r in self.rounds if (tool, work) in r and "seconds" in r[(tool, work)]]

    def has(self, tool: str, work: str) -> bool:
        return bool(self.ok(tool, work))

    def seconds(self, tool: str, work: str, key=lambda rec: rec["seconds"]) -> list[float]:
        return [key(rec) for rec in self.ok(tool, work)]

    def bare(self) -> list[float]:
        return self.seconds(CB, "bare")

    def per_round(self, fn) -> list[float]:
        """fn(round) for every round where it is defined."""
        out = []
        for r in self.rounds:
            try:
                out.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                continue
        return out

    def fwd_eq(self, tool: str, work: str, key=lambda rec: rec["seconds"]) -> list[float]:
        return self.per_round(lambda r: key(r[(tool, work)]) / r[(CB, "bare")]["seconds"])

    def ratio(self, slow: tuple[str, str], fast: tuple[str, str], slow_key=lambda rec: rec["seconds"],
              fast_key=lambda rec: rec["seconds"]) -> list[float]:
        return self.per_round(lambda r: slow_key(r[slow]) / fast_key(r[fast]))

    def values(self, tool: str, work: str) -> dict:
        recs = self.ok(tool, work)
        return recs[-1]["values"] if recs else {}


def ac_extrapolated(units: int):
    """auto-circuit's exact patching time for `units` patched forwards, from the measured ones."""
    return lambda rec: rec["values"]["ablation_seconds"] + units * statistics.median(rec["values"]["unit_seconds"])


def ac_per_unit(rec: dict) -> float:
    return statistics.median(rec["values"]["unit_seconds"])


def ac_total(rec: dict) -> float:
    """auto-circuit's exact patching of its units: the counterfactual run plus every patched forward."""
    return rec["values"]["ablation_seconds"] + sum(rec["values"]["unit_seconds"])


def ac_edge_names(edges: dict[str, float]) -> dict[str, float]:
    """circuitbench edge names -> auto-circuit's."""
    out = {}
    for name, value in edges.items():
        src, dst = name.split("->")
        out[f"{ac_name(src)}->{ac_name(dst)}"] = value
    return out


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def mark(value: float | None, goal: float, higher: bool) -> str:
    if value is None:
        return "pending"
    return "✓" if (value >= goal if higher else value <= goal) else "✗"


def report(res: Results, meta: dict, threads: int) -> tuple[str, list[dict]]:
    lines: list[str] = []
    n_heads_total = None
    cb_exact = res.values(CB, "exact")
    if cb_exact:
        n_heads_total = int(np.asarray(cb_exact["patched"]).size)
    bare = res.bare()
    loads = [x for r in res.rounds for rec in r.values() for x in rec.get("load", [])]
    lines.append(f"setup: GPT-2-small architecture (random init, seed {meta['seed']}), IOI, {meta['n']} prompts of "
                 f"{meta['length']} tokens (clean vs ABC counterfactual), logit difference at END; {threads} torch "
                 f"thread(s); {len(res.rounds)} rounds; load average {min(loads):.1f}–{max(loads):.1f}"
                 if loads else "setup: no job ran")
    if bare:
        fb = [statistics.median(rec["values"]["forward_backward"]) for rec in res.ok(CB, "bare")]
        lines.append(f"bare HF forward of the batch: {fmt_s(bare)} s (min / median over rounds); forward + backward "
                     f"to the activations: {fmt_s(fb)} s")
    rows = []

    def row(work: str, tool: str, key=lambda rec: rec["seconds"], note: str = "", agree: str = "",
            base: tuple[str, str] | None = None) -> None:
        secs = res.seconds(tool, work.split(":")[-1], key)
        if not secs:
            skipped = [r[(tool, work.split(":")[-1])] for r in res.rounds if (tool, work.split(":")[-1]) in r]
            why = skipped[0].get("skipped") or skipped[0].get("error", "") if skipped else "not run"
            rows.append(f"| {work.split(':')[0]} | {tool} | — | — | — | {why} |")
            return
        fe = res.fwd_eq(tool, work.split(":")[-1], key)
        speed = ""
        if base is not None and (tool, work.split(":")[-1]) != base:
            r = res.ratio((tool, work.split(":")[-1]), base, slow_key=key)
            speed = f"{med(r):.2f}× circuitbench's time" if r else ""
        cells = [work.split(":")[0], tool, fmt_s(secs), f"{med(fe):.1f}" if fe else "—", speed, agree + note]
        rows.append("| " + " | ".join(cells) + " |")

    # agreement
    def agree_heads(key: str, other: dict) -> str:
        mine = res.values(CB, "exact" if key == "patched" else "attribution")
        if not mine or not other or key not in other:
            return ""
        a, b = np.asarray(mine[key]), other[key]
        if isinstance(b, dict):  # auto-circuit's subset of heads, "l.h" -> value
            keys = sorted(b)
            a = [a[int(k.split(".")[0]), int(k.split(".")[1])] for k in keys]
            b = [b[k] for k in keys]
            return f"max |diff| {max_abs(a, b):.1e} on the {len(keys)} heads it ran"
        return f"Spearman {spearman(a, b):.4f}, max |diff| {max_abs(a, b):.1e}"

    header = ("| work | tool | time s (min / median) | forward-equiv. (median) | vs circuitbench (median) "
              "| agreement / note |")
    rule = "|---|---|---|---|---|---|"
    lines += ["", header, rule]
    row("exact patching, all heads:exact", CB, agree=f"{n_heads_total} heads" if n_heads_total else "",
        note=" (activation_patching with `mlps: false`: heads only, as the per-head loops)", base=(CB, "exact"))
    row("exact patching, all heads:exact", TL2, agree=agree_heads("patched", res.values(TL2, "exact")),
        note=" (per-head loop, one full forward per head)", base=(CB, "exact"))
    if res.has(AC, "exact_heads") and n_heads_total:
        row("exact patching, all heads:exact_heads", AC, key=ac_extrapolated(n_heads_total),
            agree=agree_heads("patched", res.values(AC, "exact_heads")),
            note=f"; extrapolated: counterfactual run + {n_heads_total} × the median of its "
                 f"{res.values(AC, 'exact_heads')['units']} timed patched forwards (all outgoing edges of a head)",
            base=(CB, "exact"))
    row("attribution patching, all heads:attribution", CB, base=(CB, "attribution"),
        agree=f"{n_heads_total} heads" if n_heads_total else "")
    row("attribution patching, all heads:attribution", TL2,
        agree=agree_heads("attribution", res.values(TL2, "attribution")),
        note=" (hand-written: cached corrupted run, clean run + backward, weights frozen)", base=(CB, "attribution"))
    ac_eap = res.values(AC, "eap")
    row("attribution patching, all heads:eap", AC, agree=agree_heads("attribution", ac_eap),
        note=" (node = sum of the mask gradients of a head's outgoing edges: the same run as its EAP)",
        base=(CB, "attribution"))
    n_edges = ac_eap.get("n_edges") if ac_eap else None
    cb_eap = res.values(CB, "eap")
    eap_agree = ""
    if cb_eap and ac_eap and "edges" in ac_eap:
        mine = ac_edge_names(cb_eap["edges"])
        keys = sorted(set(mine) & set(ac_eap["edges"]))
        a, b = [mine[k] for k in keys], [ac_eap["edges"][k] for k in keys]
        eap_agree = (f"{len(keys)} edges matched by name: Spearman {spearman(a, b):.4f}, max |diff| {max_abs(a, b):.1e}"
                     f" (scale {max(abs(x) for x in b):.1e})")
    row(f"EAP, all {n_edges or ''} edges:eap", AC, note=" (mask_gradient_prune_scores, mask_val=0)", base=(CB, "eap"))
    row(f"EAP, all {n_edges or ''} edges:eap", CB, base=(CB, "eap"), agree=eap_agree)
    row("EAP-IG, 5 steps:eap_ig", CB, note="inputs variant, α = k/5 (EAP-IG's published points); "
        "no peer run (auto-circuit's integrated-gradients option is a different path: mask interpolation)")
    edge_agree = ""
    ac_edges, cb_edges = res.values(AC, "exact_edges"), res.values(CB, "edge_patching")
    if ac_edges and cb_edges:
        keys = sorted(cb_edges["patched"])
        a, b = [cb_edges["patched"][k] for k in keys], [ac_edges["patched"].get(k, float("nan")) for k in keys]
        edge_agree = f"max |diff| {max_abs(a, b):.1e} on the {len(keys)} edges ({', '.join(keys)})"
    row(f"exact edge patching, {EDGE_SAMPLE} edges:exact_edges", AC, key=ac_total, base=(CB, "edge_patching"),
        note=" (counterfactual run + one patched forward of the factorized model per edge)")
    row(f"exact edge patching, {EDGE_SAMPLE} edges:edge_patching", CB, base=(CB, "edge_patching"),
        agree=edge_agree, note=" (clean and counterfactual base runs + one forward per edge from its block)")
    row("plain evaluation (clean + corrupted):eval", CB,
        note=" (vs two bare HF forwards, interleaved in the same process)")
    lines += rows

    # goals
    goals = []
    attr_fe = res.fwd_eq(CB, "attribution")
    attr_ratio = res.ratio((TL2, "attribution"), (CB, "attribution"))
    exact_ratio = res.ratio((TL2, "exact"), (CB, "exact"))
    overhead = [x for rec in res.ok(CB, "eval") for x in rec["values"]["overhead"]]
    eap_ratio = res.ratio((AC, "eap"), (CB, "eap")) if res.has(CB, "eap") else []
    eap_fe = res.fwd_eq(CB, "eap") if res.has(CB, "eap") else []
    ig_ratio = res.ratio((CB, "eap_ig"), (CB, "eap")) if res.has(CB, "eap_ig") else []
    goals.append(("attribution patching, forward-equivalents", med(attr_fe), "≤ 3", 3.0, False))
    goals.append(("attribution patching, TransformerLens 2.x time / circuitbench's", med(attr_ratio), "≥ 1.3×", 1.3,
                  True))
    goals.append(("exact head patching, TransformerLens 2.x per-head loop / circuitbench", med(exact_ratio), "≥ 4×",
                  4.0, True))
    goals.append(("EAP, auto-circuit / circuitbench", med(eap_ratio), "≥ 5×", 5.0, True))
    goals.append(("EAP, forward-equivalents", med(eap_fe), "≤ 4", 4.0, False))
    goals.append(("EAP-IG (5 steps) / EAP", med(ig_ratio), "≤ 3×", 3.0, False))
    edge_ratio = []
    if res.has(CB, "edge_patching"):
        edge_ratio = res.per_round(lambda r: ac_total(r[(AC, "exact_edges")]) / r[(CB, "edge_patching")]["seconds"])
    goals.append((f"exact edge patching ({EDGE_SAMPLE} edges), auto-circuit / circuitbench", med(edge_ratio), "≥ 5×",
                  5.0, True))
    goals.append(("plain evaluation overhead over bare HF forwards", med(overhead), "≤ 10 %", 0.10, False))
    lines += ["", "| goal | measured (median) | target | |", "|---|---|---|---|"]
    summary = []
    for name, value, target, goal, higher in goals:
        if value is None:
            shown = "not measured"
        elif "overhead" in name:
            shown = f"{value:+.1%} (min {min(overhead):+.1%})"
        elif "forward" in name:
            shown = f"{value:.2f}"
        else:
            shown = f"{value:.2f}×"
        lines.append(f"| {name} | {shown} | {target} | {mark(value, goal, higher)} |")
        summary.append({"goal": name, "value": value, "target": target, "met": mark(value, goal, higher)})
    return "\n".join(lines), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--peers-python", default=str(HERE / "peers" / ".venv" / "bin" / "python"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=16, help="IOI prompts (one batch)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/bench/peers"))
    ap.add_argument("--only", default="", help="comma-separated tool:work subset, e.g. circuitbench:exact")
    ap.add_argument("--report-only", action="store_true", help="rebuild the table from the stored records")
    args = ap.parse_args()
    root = (args.out / f"n{args.n}").resolve()  # the jobs run in other directories
    args.peers_python = str(Path(args.peers_python).absolute())  # (a venv's python: not resolved past its link)
    meta = export(root, args.n, pool=max(256, 8 * args.n))
    jobs = [j for j in JOBS if not args.only or f"{j[0]}:{j[1]}" in args.only.split(",") or j[1] == "bare"]
    if not Path(args.peers_python).exists():
        print(f"(no peers' environment at {args.peers_python}: circuitbench's side only; `make bench-peers`)")
        jobs = [j for j in jobs if j[0] == CB]
    rounds = []
    for r in range(args.rounds):
        records: dict[tuple[str, str], dict] = {}
        order = jobs[r % len(jobs):] + jobs[: r % len(jobs)]
        for tool, work, script in order:
            if r > 0 and (tool, work) in ONCE:
                continue
            out = root / f"round{r + 1}_{tool.split()[0]}_{work}.json"
            if args.report_only:
                if out.exists():
                    records[(tool, work)] = json.loads(out.read_text())
                continue
            rec = run_job(tool, work, script, root, out, args.peers_python, args.threads)
            records[(tool, work)] = rec
            took = f"{rec['seconds']:.2f} s" if "seconds" in rec else rec.get("skipped") or rec.get("error")
            print(f"round {r + 1}: {tool} {work}: {took}", flush=True)
        rounds.append(records)
    text, summary = report(Results(rounds), meta, args.threads)
    print()
    print(text)
    (args.out / f"peers_n{args.n}.md").write_text(text + "\n")
    (args.out / f"peers_n{args.n}.json").write_text(json.dumps({"meta": meta, "goals": summary}, indent=1))


if __name__ == "__main__":
    main()
