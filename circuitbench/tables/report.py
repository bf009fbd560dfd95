"""One RunResult → pictures and a self-contained HTML page: per-method layer × head heatmaps
(colour bars saying what the scores are, in which units, noising or denoising; each scaled
symmetrically with a floor so a near-zero map stays pale; the circuit outlined and its rule in
words), MLP scores, an edge circuit drawn as a graph, the faithfulness curve (or why faithfulness
is undefined), and causal-tracing maps (layer × position). An EAP-IG / MIB graph file gets its
graph alone."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from circuitbench.circuits.circuit import RANDOM_INIT, describe_rule
from circuitbench.circuits.graph_files import GraphFile, is_graph_json, load_sidecar, read_graph_json
from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.models.graph import head_node, mlp_node
from circuitbench.output_paths import check_output_dir, is_report_dir, save_figure, staged_output
from circuitbench.results.schema import RunResult
from circuitbench.results.store import parse_result
from circuitbench.specs.registries import METRICS
from circuitbench.tables.console import outside_text, panel_text, verdict_text
from circuitbench.tables.pages import Cell, esc, page, table_html
from circuitbench.tables.plots import circuit_graph, head_heatmap, mlp_scores, pyplot

# Scores normalised by the clean − corrupted gap: below this a head carries under 10 % of the gap,
# and a map whose largest score is smaller is drawn pale, not saturated.
GAP_FLOOR = 0.1
ATTENTION_FLOOR = 0.25  # attention detectors (a mass between 0 and 1): a map below this is drawn pale


def method_meaning(result: RunResult, method: str) -> tuple[str, str, float]:
    """(colour bar label, caption, colour floor) of one method's head scores: what a value means,
    in which units, and the smallest ± range its map is drawn with."""
    spec = result.task.spec
    options = (spec.get("method_options") or {}).get(method, {})
    metric = result.task.main_metric
    if method == "activation_patching":
        direction = options.get("direction", "noising")
        how = ("the corrupted output patched into the clean run (noising): (m_clean − m_patched) / "
               "|m_clean − m_corrupted|" if direction == "noising" else
               "the clean output patched into the corrupted run (denoising): (m_patched − m_corrupted) / "
               "|m_clean − m_corrupted|")
        return (f"share of the clean−corrupted {metric} gap ({direction})",
                f"Exact activation patching, {direction}: each head's output {how}, at positions "
                f"{options.get('positions', 'all')}. 1: the head alone carries the whole gap.", GAP_FLOOR)
    if method == "attribution_patching":
        steps = options.get("ig_steps", 0)
        return (f"≈ share of the {metric} gap (noising, gradient)",
                "Attribution patching: a first-order (gradient) estimate of noising patching, same units"
                + (f", integrated gradients over {steps} steps." if steps else "."), GAP_FLOOR)
    if method == "ablation":
        kind = options.get("kind", "mean")
        stderr = result.metrics_stderr.get(metric, 0.0)  # None: one prompt, no standard error
        noise = stderr or 0.0
        worse = "falls" if METRICS.get(metric).higher_is_better else "rises"
        return (f"{metric} worsening when ablated ({kind}), {metric} units",
                f"{kind.capitalize()} ablation: how much {metric} {worse} when the head's output is replaced "
                f"(positive: the head helps the task); the colour range is at least ± the metric's standard error "
                f"({'n/a' if stderr is None else format(stderr, '.3g')}).", noise)
    detectors = {"previous_token": "attention to the previous token",
                 "duplicate_token": "attention to earlier copies of the query's token",
                 "induction": "attention to the token after an earlier copy (prefix matching)"}
    if method in detectors:
        return (f"mean attention mass (0–1): {detectors[method]}",
                f"Attention-pattern detector, on this task's own prompts: {detectors[method]}, averaged over "
                "queries that have such a target.", ATTENTION_FLOOR)
    if method == "attention_to":
        return (f"mean attention {options.get('source', 'END')} → {options.get('target', 'IO')} (0–1)",
                f"Attention from position {options.get('source', 'END')} to {options.get('target', 'IO')}.",
                ATTENTION_FLOOR)
    return ("score", f"Scores of the method '{method}'.", 0.0)


def faithfulness_curve(result: RunResult, path: Path) -> None:
    plt = pyplot()
    c = result.circuit
    assert c is not None and c.faithfulness is not None
    f = c.faithfulness
    xs = [p[1] for p in f.curve]
    ys = [p[2] for p in f.curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    mib = f.integration == "mib"
    what = {"edge": "edges", "node": "nodes"}.get(c.level, "heads")
    ax.plot(xs, ys, "o-", label=f"top-k {what} by |{c.method} score|" + (" (CMD)" if mib else ""))
    if f.curve_signed:
        ax.plot([p[1] for p in f.curve_signed], [p[2] for p in f.curve_signed], "s--", label="signed ranking (CPR)")
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    total = f.curve[-1][0] if f.curve else result.model.n_layers * result.model.n_heads
    size = len(c.edges) if c.level == "edge" else len(c.heads) + len(c.mlps)
    ax.axvline(size / max(total, 1), color="C3", lw=0.8, label=f"chosen circuit ({size} {what})")
    ax.set(xlabel=f"fraction of {what} kept", ylabel=f"faithfulness f ({f.ablation} ablation)",
           xscale="log" if mib else "symlog" if len(xs) > 12 else "linear",
           title=f"faithfulness (CPR {f.cpr:.2f}, CMD {f.cmd:.2f}{', MIB' if mib else ''})")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def trace_map(name: str, trace: dict, path: Path) -> None:
    plt = pyplot()
    mean = np.asarray(trace["mean"], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * mean.shape[1] + 2), max(3, 0.3 * mean.shape[0] + 1.5)))
    bound = max(float(np.abs(mean).max()), 1e-12)
    im = ax.imshow(mean, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(trace["positions"])), trace["positions"], rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="layer", title=f"{name} ({trace['noise']}, {trace['metric']})")
    fig.colorbar(im, ax=ax, label=f"indirect effect on {trace['metric']}")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _members(c) -> str:
    """The circuit's components by the names the leaderboard uses: a1.h3 … m0 (aL.hH: layer L, head
    H); an edge circuit: how many edges over which nodes."""
    nodes = [head_node(int(layer), int(head)) for layer, head in c.heads] + [mlp_node(int(m)) for m in c.mlps]
    text = ", ".join(nodes) or "(none)"
    return f"{len(c.edges)} edges over {text}" if c.level == "edge" else text


def circuit_html(result: RunResult) -> str:
    """The circuit in words: rule, components, faithfulness (or why it is undefined), candidates, notes;
    one paragraph a line."""
    c = result.circuit
    if c is None:
        return "<p>No circuit: the task has no circuit rule.</p>"
    m = result.model
    heads_total = (m.n_layers or 0) * (m.n_heads or 0)
    n_total = (heads_total + (m.n_layers or 0) * bool(m.has_mlp) if c.level == "node" else heads_total
               if c.level == "head" else 0) or None
    size = len(c.edges) if c.level == "edge" else len(c.heads) + len(c.mlps)
    of = f" of {n_total}" if n_total else ""
    where = "drawn as a graph below" if c.level == "edge" else f"outlined in black on the {html.escape(c.method)} map"
    parts = [f"<p><b>Circuit</b> ({where}): "
             f"{html.escape(describe_rule(c.rule, n_total))} of the <i>{html.escape(c.method)}</i> scores → "
             f"{html.escape(_members(c))} ({size}{of}).</p>"]
    verdict, _, reasons = verdict_text(c).removeprefix("verdict: ").partition(" (")
    parts.append(f"<p class='verdict'>verdict: <b>{html.escape(verdict)}</b>"
                 + (f" ({html.escape(reasons)}" if reasons else "") + "</p>")
    if c.panel:
        parts.append(f"<p>Ablation panel (f, 95 % bootstrap interval): {html.escape(panel_text(c))}.</p>")
    if c.stability is not None:
        st = c.stability
        parts.append(f"<p>Stability of the chosen set: mean Jaccard {st.jaccard:.2f} [{st.range[0]:.2f}, "
                     f"{st.range[1]:.2f}] between the circuits of {st.resamples} half-samples of {st.prompts} prompts "
                     f"({st.with_chosen:.2f} with the circuit kept).</p>")
    if c.completeness is not None:
        k = c.completeness
        parts.append(f"<p>Incompleteness (Wang et al.: |m(C \\ K) − m(M \\ K)| / |m(M) − m(∅)| under {k.ablation} "
                     f"ablation): max {k.max_incompleteness:.2f}, mean {k.mean_incompleteness:.2f} over {k.subsets} "
                     f"subsets K of the circuit; worst K: {html.escape(' '.join(k.worst_subset))}.</p>")
    if c.outside_necessary:
        shown = html.escape(outside_text(c.outside_necessary))
        parts.append("<p class='warning'>necessary outside the circuit (each removed alone from the full model: "
                     f"change of the metric, share of the full effect): {shown}</p>")
    if c.invisible:
        parts.append("<p>Invisible to patching (same output in clean and counterfactual runs): "
                     f"{html.escape(' '.join(c.invisible))}.</p>")
    if result.counterfactuals:
        each = "; ".join(f"{run.name}: {run.n_prompts} prompts, {len(run.invisible)} components never changed"
                         for run in result.counterfactuals)
        agree = "; ".join(f"{k} = {'n/a' if v is None else f'{v:.2f}'}" for k, v in
                          result.counterfactual_agreement.items())
        parts.append(f"<p>Counterfactuals ({html.escape(each)}). Scores combined: "
                     f"{html.escape(result.score_combination or '')}. Agreement of their circuits: "
                     f"{html.escape(agree or 'n/a')}.</p>")
    f = c.faithfulness
    if f is None:
        parts.append("<p>Faithfulness not measured.</p>")
    elif f.value is None:
        parts.append("<p class='undefined'><b>Faithfulness undefined</b>: "
                     f"{html.escape(f.undefined or '')} (m(M) = {f.m_full:.4g}, m(∅) = "
                     f"{f.m_empty:.4g}, {html.escape(f.metric)}).</p>")
    else:
        others = "; ".join(f"{html.escape(k)} ablation {'undefined' if v is None else f'{v:.3f}'}"
                           for k, v in f.by_ablation.items() if k != f.ablation)
        parts.append("<p><b>Faithfulness</b> f = (m(C) − m(∅)) / (m(M) − m(∅)) = "
                     f"({f.m_circuit:.4g} − {f.m_empty:.4g}) / ({f.m_full:.4g} − {f.m_empty:.4g}) = "
                     f"<b>{f.value:.3f}</b> under "
                     f"{html.escape(f.ablation)} ablation of every component outside the circuit"
                     + (f" ({others})" if others else "") + ". Closest to 1 is best: 1 means the circuit alone "
                     "does what the model does; above 1 it overshoots.</p>")
    if len(c.candidates) > 1:
        parts.append("<p>Candidates (each method's circuit under the rule; the most faithful kept): " + " · ".join(
            f"{html.escape(k.method)} {'undefined' if k.faithfulness is None else f'{k.faithfulness:.3f}'}"
            for k in c.candidates) + "</p>")
    for note in dict.fromkeys(c.notes):  # each note once
        parts.append(f"<p class='muted'>note: {html.escape(note)}</p>")
    for warning in dict.fromkeys(c.warnings):
        parts.append(f"<p class='warning'>warning: {html.escape(warning)}</p>")
    return "\n".join(parts)


def _stderr_cell(stderr: float | None) -> str:
    """A standard error at 4 decimals; n/a when undefined (one prompt has no spread)."""
    return "n/a" if stderr is None else f"{stderr:.4f}"


def build_report(result: RunResult, out_dir: Path, result_dir: Path | None = None, embed: bool = True,
                 back: tuple[tuple[str, str], ...] = ()) -> list[Path]:
    """Write the PNGs and report.html into out_dir; returns the files written. `result_dir` is where
    the result's sidecar files (edge scores) are. `embed`: the pictures inside the page (one
    self-contained file, `circuitbench report`) or beside it, linked (the leaderboard's reports);
    `back`: (relative link, text) pairs of the pages the report is reached from."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str, Path]] = []
    c = result.circuit
    if c is not None and c.level == "edge" and c.method in result.edge_scores and result_dir is not None:
        sidecar = result_dir / result.edge_scores[c.method].file
        if sidecar.is_file():
            graph_file = load_sidecar(sidecar, result.model.n_layers, result.model.n_heads, c.method)
            path = out_dir / "circuit_graph.png"
            circuit_graph(c.edges, graph_file.scores, graph_file.graph,
                          f"{result.model.label} · {result.task.name} · {c.method}", path)
            figures.append(("edge circuit", f"The {len(c.edges)} edges the rule kept from {c.method}'s edge scores, "
                            "layer by layer.", path))
    if any(k.startswith("m") for s in result.node_scores.values() for k in s):
        path = out_dir / "mlp_scores.png"
        mlp_scores(result.node_scores, f"{result.model.label} · {result.task.name} · MLP scores", path)
        figures.append(("MLP scores", "Each method's score of every layer's MLP, in the units of its head scores.",
                        path))
    circuit = [tuple(h) for h in result.circuit.heads] if result.circuit else None
    label = result.model.label
    for method, scores in result.head_scores.items():
        path = out_dir / f"heads_{method}.png"
        outlined = circuit if result.circuit and result.circuit.method == method else None
        reference = [tuple(h) for h in result.reference.heads] if result.reference else None
        colorbar, caption, floor = method_meaning(result, method)
        rule = describe_rule(result.circuit.rule) if result.circuit else ""
        head_heatmap(scores, f"{label} · {result.task.name} · {method}", path, outlined, reference,
                     colorbar=colorbar, floor=floor, circuit_label=f"circuit: {rule}")
        figures.append((f"head scores: {method}", caption, path))
    if result.circuit and result.circuit.faithfulness and result.circuit.faithfulness.curve:
        path = out_dir / "faithfulness.png"
        faithfulness_curve(result, path)
        figures.append(("faithfulness curve", "f of the top-k heads for every k (CPR: area under it, higher better; "
                        "CMD: area under |1 − f|, lower better).", path))
    for name, trace in result.traces.items():
        path = out_dir / f"trace_{name.replace('/', '_')}.png"
        trace_map(name, trace, path)
        figures.append((f"causal tracing: {name}", "", path))
    nan = float("nan")
    metric_rows = [[Cell(k), Cell(f"{v:.4f}", cls="num"),
                    Cell(_stderr_cell(result.metrics_stderr.get(k, nan)), cls="num"),
                    Cell(f"{result.metrics_corrupted.get(k, nan):.4f}", cls="num")] for k, v in result.metrics.items()]
    images: list[str] = []
    for title, caption, p in figures:
        src = f"data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}" if embed else p.name
        images += [f"<h3>{esc(title)}</h3>"] + ([f"<p class='caption'>{esc(caption)}</p>"] if caption else [])
        images.append(f'<img src="{src}" alt="{html.escape(title)}">')
    task, model = result.task, result.model
    random_init = model.init == "random"
    badge = " <span class='badge'>random init</span>" if random_init else ""
    banner = ([f"<p class='baseline'>{html.escape(label)}: <b>random-init weights</b> (seeded, architecture of "
               f"{html.escape(model.name)}), a baseline that has learned nothing. Its scores show what chance looks "
               f"like, not a circuit of the model. Names ending in {RANDOM_INIT} mark such models everywhere.</p>"]
              if random_init else [])
    nav = ["<nav>" + " · ".join(f'<a href="{html.escape(href)}">← {esc(text)}</a>' for href, text in back)
           + "</nav>"] if back else []
    body = [*nav, f"<h1>{html.escape(label)} · {html.escape(task.name)}{badge}</h1>", *banner,
            f"<p class='muted'>{task.n_prompts} {html.escape(task.split)} prompts ({task.n_dropped} dropped) · "
            f"{html.escape(model.dtype)} · spec {task.spec_hash} · {html.escape(result.run.started_at)}</p>",
            "<h2>Metrics</h2>", *table_html(["metric", "clean", "± se", "corrupted"], metric_rows, sortable=False),
            "<h2>Circuit</h2>", *circuit_html(result).splitlines()]
    if images:
        body += ["<h2>Pictures</h2>", *images]
    write_atomic(out_dir / "report.html", page(f"{label} · {task.name} · circuitbench report", body, "report",
                                               style=REPORT_STYLE))
    return [p for _, _, p in figures] + [out_dir / "report.html"]


REPORT_STYLE = """\
.baseline { background: #fff7ed; border-left: 4px solid #b45309; padding: .5em 1em; }
.undefined { background: #f1f5f9; border-left: 4px solid #64748b; padding: .5em 1em; }
.caption { color: #555; }
img { display: block; margin: .5em 0 1.5em; }"""


def build_graph_report(graph_file: GraphFile, label: str, out_dir: Path) -> list[Path]:
    """An EAP-IG / MIB graph file: its circuit (edges in_graph) drawn as a graph, and its top edges."""
    out_dir.mkdir(parents=True, exist_ok=True)
    g = graph_file.graph
    edges = graph_file.edges or sorted(graph_file.scores, key=lambda e: -abs(graph_file.scores[e]))[:30]
    path = out_dir / "circuit_graph.png"
    circuit_graph(edges, graph_file.scores, g, label, path)
    top = sorted(graph_file.scores, key=lambda e: -abs(graph_file.scores[e]))[:30]
    rows = [[Cell(e, cls="components"), Cell(f"{graph_file.scores[e]:.4g}", cls="num"), Cell("✓" if e in edges else "")]
            for e in top]
    picture = base64.b64encode(path.read_bytes()).decode()
    body = [f"<h1>{esc(label)}</h1>",
            f"<p>{esc(g.describe())} · {g.n_edges} edges · {len(graph_file.edges)} in the circuit"
            f"{'' if graph_file.edges else ' (none marked: the 30 largest |scores| drawn)'}</p>",
            f'<img src="data:image/png;base64,{picture}" alt="circuit graph">',
            *table_html(["edge", "score", "drawn"], rows, sortable=False)]
    write_atomic(out_dir / "report.html", page(f"{label} · circuitbench graph", body, "report"))
    return [path, out_dir / "report.html"]


REPORT = "a report circuitbench wrote"


def write_report(source: Path, out: Path | None = None, force: bool = False) -> tuple[Path, list[Path]]:
    """The report of a RunResult or an EAP-IG/MIB graph file, written into `out` (default: next to
    it, <stem>_report/) only when that folder is new, empty or an earlier report (else --force), all
    files or none. Returns the folder and the files written."""
    target = out if out is not None else source.parent / f"{source.stem}_report"
    flag = "--out" if out is not None else "report folder"
    try:
        raw = json.loads(source.read_text())
    except (OSError, ValueError) as e:
        raise CircuitbenchError(f"{source}: not a readable RunResult ({type(e).__name__}).") from None
    if is_graph_json(raw):
        graph_file = read_graph_json(raw, str(source))
        check_output_dir(target, flag, force=force, ours=is_report_dir, what=REPORT)
        with staged_output(target) as staging:
            files = build_graph_report(graph_file, source.stem, staging)
        return target, [target / f.relative_to(staging) for f in files]
    result = parse_result(raw, source)  # another schema version, NaN …: refused, named
    if result.status != "complete":
        assert result.error is not None
        raise CircuitbenchError(f"{source}: the unit failed ({result.error.type}: {result.error.message}); there is "
                                "nothing to report. Rerun it with --resume.")
    check_output_dir(target, flag, force=force, ours=is_report_dir, what=REPORT)
    with staged_output(target) as staging:
        files = build_report(result, staging, source.parent)
    return target, [target / f.relative_to(staging) for f in files]
