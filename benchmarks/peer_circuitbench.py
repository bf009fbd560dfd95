"""circuitbench's side of the peer benchmark (runs in circuitbench's venv), one piece of work per
process, written as the same JSON record as the peers' scripts (benchmarks/peers/common.py):

    python benchmarks/peer_circuitbench.py DIR WORK OUT.json

WORK: bare (a bare HF forward of the clean batch, and forward + backward to the activations),
eval (circuitbench's plain evaluation and bare HF forwards, interleaved), exact
(activation_patching of the heads, `mlps: false`), attribution (attribution_patching), the edge
methods eap and eap_ig (5 steps) over all edges, and edge_patching: exact patching of the edges in
DIR/edges.json.

Values are in the peers' units: exact -> mean patched logit difference per head (recovered from
the normalised score: m_clean - score * (m_clean - m_corr)); attribution -> mean over prompts of
(z_corr - z_clean) . dm/dz (score * -(m_clean - m_corr)).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_export import bench_prompts  # noqa: E402

from circuitbench.models.loading import load_model  # noqa: E402
from circuitbench.scores.edges import output_deltas, patched_edge_metrics, valid_positions  # noqa: E402
from circuitbench.scores.evaluation import evaluate  # noqa: E402
from circuitbench.scores.interventions import base_runs  # noqa: E402
from circuitbench.scores.methods.context import MethodContext  # noqa: E402
from circuitbench.scores.scoring import MethodRun, run_methods  # noqa: E402
from circuitbench.specs.registries import METHODS  # noqa: E402

EDGE_METHODS = {"eap": {}, "eap_ig": {"steps": 5}}  # each method's options here


def load(root: Path):
    meta = json.loads((root / "meta.json").read_text())
    model = load_model(str(root / "model"), device="cpu")
    data, rows, _ = bench_prompts(model.vocab, model.unk_id, model.n_ctx, meta["n"], meta["pool"])
    saved = torch.load(root / "data.pt")
    assert rows == meta["rows"] and torch.equal(data.tokens, saved["tokens"]) and torch.equal(
        data.corrupted, saved["corrupted"]), "circuitbench's prompts differ from the exported ones"
    return model, data


def hf_model(root: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(root / "model", attn_implementation="eager").eval()


def timed(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bare(root: Path, reps: int = 5) -> dict:
    hf, tokens = hf_model(root), torch.load(root / "data.pt")["tokens"]
    for p in hf.parameters():
        p.requires_grad_(False)

    def forward() -> None:
        with torch.inference_mode():
            hf(tokens)

    def forward_backward() -> None:
        embeds = hf.get_input_embeddings()(tokens).detach().requires_grad_(True)
        hf(inputs_embeds=embeds).logits[:, -1].sum().backward()

    forward()
    fwd = [timed(forward)[1] for _ in range(reps)]
    fwd_bwd = [timed(forward_backward)[1] for _ in range(reps)]
    return {"seconds": statistics.median(fwd), "values": {"forward": fwd, "forward_backward": fwd_bwd}}


def base_metrics(model, data) -> tuple[float, float]:
    clean, corrupt = evaluate(model, data, ["logit_diff"], len(data))
    return float(clean["logit_diff"].double().mean()), float(corrupt["logit_diff"].double().mean())


def evaluation(root: Path, reps: int = 5) -> dict:
    model, data = load(root)
    hf = hf_model(root)
    tokens, corrupted = data.tokens, data.corrupted

    def bare_pair() -> None:
        with torch.inference_mode():
            hf(tokens)
            hf(corrupted)

    run = lambda: evaluate(model, data, ["logit_diff"], len(data))  # noqa: E731
    run(), bare_pair()
    ours, hfs = [], []
    for _ in range(reps):
        ours.append(timed(run)[1])
        hfs.append(timed(bare_pair)[1])
    overhead = [o / h - 1 for o, h in zip(ours, hfs)]
    return {"seconds": statistics.median(ours), "values": {"evaluate": ours, "bare_hf_pair": hfs,
                                                           "overhead": overhead}}


def head_method(root: Path, method: str) -> dict:
    model, data = load(root)
    m_clean, m_corr = base_metrics(model, data)
    model.block_formats()  # recorded once per model, not part of the timing
    # exact: heads only (`mlps: false`), as the peers' per-head loops patch them
    options = {method: {"mlps": False}} if method == "activation_patching" else {}
    run_methods(model, data.subset(0, 2), [method], MethodRun(2, method_options=options))  # warm-up (not timed)
    scores, seconds = timed(lambda: run_methods(model, data, [method], MethodRun(
        len(data), metric="logit_diff", method_options=options))[method].heads)
    gap = m_clean - m_corr
    values = m_clean - scores * gap if method == "activation_patching" else -scores * gap
    key = "patched" if method == "activation_patching" else "attribution"
    return {"seconds": seconds, "values": {key: np.asarray(values).tolist(), "m_clean": m_clean, "m_corr": m_corr}}


def edge_method(root: Path, method: str) -> dict:
    """eap / eap_ig over all edges; values: {"edges": {name: mean over prompts of Σ (a_corr − a_clean) ·
    ∂m/∂x_v}} (auto-circuit's mask gradient, un-normalised: −score · (m_clean − m_corr))."""
    model, data = load(root)
    m_clean, m_corr = base_metrics(model, data)
    ctx = MethodContext(batch_size=len(data), metric="logit_diff", options=EDGE_METHODS[method])
    small = data.subset(0, 2)
    METHODS.get(method).run(model, small, MethodContext(batch_size=2, metric="logit_diff",
                                                        options=EDGE_METHODS[method]))  # warm-up (not timed)
    out, seconds = timed(lambda: METHODS.get(method).run(model, data, ctx))
    graph = out.graph
    raw = -out.scores * (m_clean - m_corr)
    return {"seconds": seconds, "values": {"n_edges": graph.n_edges, "edges": graph.as_dict(raw),
                                           "m_clean": m_clean, "m_corr": m_corr}}


def edge_patching(root: Path) -> dict:
    """Exact patching of the edges of DIR/edges.json, one at a time (the set auto-circuit patches):
    both base runs and the patched forwards, timed; values: {"patched": {name: mean patched
    logit difference}}."""
    model, data = load(root)
    graph = model.component_graph()
    names = json.loads((root / "edges.json").read_text())
    edges = [graph.edge_position(name) for name in names]
    model.block_formats()  # recorded once per model, not part of the timing

    def run(prompts) -> list[float]:
        ctx = MethodContext(batch_size=len(prompts), metric="logit_diff")
        sums = torch.zeros(len(edges), dtype=torch.float64)
        for batch, runs in base_runs(model, prompts, ctx, ("clean", "corrupted")):
            clean, corrupt = runs["clean"], runs["corrupted"]
            valid = valid_positions(batch, model.device)
            delta = output_deltas(model, clean, corrupt, valid)  # source-major, as patched_edge_metrics reads it
            sums += patched_edge_metrics(model, graph, batch, clean, delta, edges, ctx)
        return (sums / len(prompts)).tolist()

    run(data.subset(0, 2))  # warm-up (not timed)
    values, seconds = timed(lambda: run(data))
    return {"seconds": seconds, "values": {"patched": dict(zip(names, values)), "units": len(edges)}}


def main() -> None:
    root, work, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    if work == "bare":
        record = bare(root)
    elif work == "eval":
        record = evaluation(root)
    elif work in ("exact", "attribution"):
        record = head_method(root, "activation_patching" if work == "exact" else "attribution_patching")
    elif work == "edge_patching":
        record = edge_patching(root)
    else:
        record = edge_method(root, work)
    from circuitbench import __version__

    out.write_text(json.dumps({"tool": f"circuitbench {__version__}", "work": work, "python": sys.version.split()[0],
                               "torch": torch.__version__, "threads": torch.get_num_threads(), **record}))


if __name__ == "__main__":
    main()
