"""`make bench` (edges): the cost of the edge methods, printed as `name: value`.

1. EAP over every edge, in forward-pass equivalents (goal ≤ 4, as for node attribution patching)
2. EAP-IG (inputs, 5 steps) relative to EAP (goal ≤ 3×)
3. exact edge patching: seconds and forward-equivalents per edge, from a sample of edges into
   blocks 0, 4, 8, 11 and the logits (an edge costs a forward from its destination's block on),
   and the estimate for all edges
Model: GPT-2-small architecture, random init (built in memory from models.yaml's architecture, no
hub); task: IOI, 32 prompts (BENCH_N). A forward-pass equivalent is one plain forward of the same
batch (full logits), the median of three, measured in the same run. One torch thread (BENCH_THREADS),
so the figures do not depend on how busy the other cores are.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from circuitbench.models.loading import load_model  # noqa: E402
from circuitbench.prompts.encoding import encode_task  # noqa: E402
from circuitbench.scores.edges import (  # noqa: E402
    accumulate_edge_scores,
    edge_layer,
    input_gradients,
    output_deltas,
    patched_edge_metrics,
    valid_positions,
)
from circuitbench.scores.interventions import end_only_logits, record_base_run  # noqa: E402
from circuitbench.scores.methods.context import MethodContext  # noqa: E402
from circuitbench.scores.methods.edges import eap, eap_ig  # noqa: E402
from circuitbench.specs.catalog import load_task  # noqa: E402


def timed(fn):
    """(fn(), CPU seconds of this process): with one torch thread, the work done, whatever else the
    shared machine runs meanwhile (wall time moves by ±50 % under other load; both are printed)."""
    t0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    print(f"  ({wall:.2f} s wall, {cpu:.2f} s CPU)")
    return out, cpu


def verdict(ok: bool) -> str:
    return "✓" if ok else "✗"


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    n = int(os.environ.get("BENCH_N", "32"))
    model = load_model("gpt2-small", init="random", device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": n}), model.vocab, model.unk_id, model.n_ctx)
    batch = data.batch(0, len(data))
    ctx = MethodContext(batch_size=n, metric="logit_diff")
    graph = model.component_graph()
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"setup: gpt2-small (random init), ioi, {len(data)} prompts, {int(batch.tokens.shape[1])} tokens, "
          f"{graph.n_edges} edges")
    model.run(batch.tokens)  # warm-up
    t_fwd = float(np.median([timed(lambda: model.run(batch.tokens))[1] for _ in range(3)]))
    print(f"forward_cpu_seconds: {t_fwd:.3f}")

    # 1. EAP; 2. EAP-IG (inputs, 5 steps, EAP-IG's k/m points). Warmed up on 2 prompts first, as
    # the forward is: the first backward pays one-off allocator and kernel set-up.
    two = encode_task(load_task("ioi").model_copy(update={"n_prompts": 2}), model.vocab, model.unk_id, model.n_ctx)
    eap(model, two, MethodContext(batch_size=2, metric="logit_diff"))
    scores, t_eap = timed(lambda: eap(model, data, ctx).edges)
    print(f"eap_cpu_seconds: {t_eap:.2f}")
    print(f"eap_forward_equivalents: {t_eap / t_fwd:.1f} (goal ≤ 4 {verdict(t_eap / t_fwd <= 4)})")
    ig_ctx = MethodContext(batch_size=n, metric="logit_diff", options={"steps": 5})
    ig, t_ig = timed(lambda: eap_ig(model, data, ig_ctx))
    print(f"eap_ig5_cpu_seconds: {t_ig:.2f}")
    print(f"eap_ig5_forward_equivalents: {t_ig / t_fwd:.1f}")
    print(f"eap_ig5_over_eap: {t_ig / t_eap:.2f}x (goal ≤ 3x {verdict(t_ig / t_eap <= 3)})")

    # What the EAP-IG ratio is made of. EAP = one base run (the corrupted one: a forward that
    # records every node's output, END-only unembedding) + one gradient step (a clean forward and
    # backward, then the contraction with the deltas); EAP-IG (inputs) = one base run (the clean one)
    # + `steps` gradient steps, the α = 0 step's forward being the corrupted run. So EAP-IG(5)/EAP =
    # (B + 5S) / (B + S) by construction, and ≤ 3 would need a gradient step S ≤ B: a forward and a
    # backward cheaper than a forward.
    unembed, _ = end_only_logits("logit_diff", batch)
    (_, clean), t_base = timed(lambda: record_base_run(model, batch.tokens, unembed))
    _, corrupt = record_base_run(model, batch.as_corrupted().tokens, unembed)
    delta = output_deltas(model, clean, corrupt, valid_positions(batch, model.device))
    total = torch.zeros(graph.real_edges.shape, dtype=torch.float64)
    _, t_step = timed(lambda: accumulate_edge_scores(model, graph, delta, input_gradients(model, batch, ctx), total))
    print(f"base_run_forward_equivalents: {t_base / t_fwd:.1f}")
    print(f"gradient_step_forward_equivalents: {t_step / t_fwd:.1f}")
    print(f"eap_ig5_over_eap_by_construction: {(t_base + 5 * t_step) / (t_base + t_step):.2f}x "
          "((1 base run + 5 steps) / (1 base run + 1 step))")

    # 3. exact edge patching, per edge, from a sample by destination block
    model.block_formats()
    # warm-up: the first patched forward pays one-off set-up (the model's self-checks), which would
    # otherwise be charged to the first destination's edges
    patched_edge_metrics(model, graph, batch, clean, delta, [(0, graph.destination_index["logits"])], ctx)
    per_layer: dict[int, list[float]] = {}
    sample = int(os.environ.get("BENCH_EDGES", "8"))
    for dst in ["a0.h0<q>", "a4.h0<k>", "a8.h0<v>", "m11", "logits"]:
        j = graph.destination_index[dst]
        edges = [(i, j) for i in range(min(sample, graph.n_upstream(dst)))]
        _, t = timed(lambda _e=edges: patched_edge_metrics(model, graph, batch, clean, delta, _e, ctx))
        layer = edge_layer(graph, j, model.n_layers)
        per_layer.setdefault(layer, []).append(t / len(edges))  # m11 and the logits share block 11
        print(f"edge_patching_cpu_seconds_per_edge_into_{dst}: {t / len(edges):.3f}")
    layers = sorted(per_layer)
    cost = np.interp(np.arange(model.n_layers), layers, [float(np.mean(per_layer[l])) for l in layers])
    counts = np.bincount([edge_layer(graph, j, model.n_layers) for j in np.nonzero(graph.real_edges)[1]],
                         minlength=model.n_layers)
    total = float((cost * counts).sum())
    print(f"edge_patching_cpu_seconds_per_edge_mean: {total / graph.n_edges:.3f}")
    print(f"edge_patching_forward_equivalents_per_edge: {total / graph.n_edges / t_fwd:.2f} (no goal: the issue "
          "asks for the figure)")
    print(f"edge_patching_all_edges_cpu_hours_estimate: {total / 3600:.1f}")
    top = np.argsort(-np.abs(scores.scores), axis=None)[:5]
    print("eap_top_edges: " + ", ".join(f"{graph.sources[i]}->{graph.destinations[j]}"
                                         for i, j in zip(*np.unravel_index(top, scores.scores.shape))))


if __name__ == "__main__":
    main()
