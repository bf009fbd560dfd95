"""auto-circuit side of the peer benchmark (a factorized patchable HookedTransformer: every head
output, MLP output and the embedding feed each later head's Q/K/V input, MLP input and the final
residual through their own edge; separate_qkv=True, slice_output="last_seq").

    python autocircuit.py DIR eap OUT.json          mask_gradient_prune_scores(grad_function="logit",
                                                     answer_function="avg_diff", mask_val=0): EAP over
                                                     all edges; per-head attribution = the sum over a
                                                     head's outgoing edges (the node's mask gradient)
    python autocircuit.py DIR exact_heads OUT.json  exact noising patching of a head = patching all of
                                                     its outgoing edges (patch_mode), one forward each,
                                                     on the heads (l, l mod n_heads), l = 0, 4, 8, ...
                                                     (too slow for all 144: the record has the time
                                                     per patched forward to extrapolate)
    python autocircuit.py DIR exact_edges OUT.json  exact patching of single edges (patch_mode with one
                                                     edge), on the edges of DIR/edges.json (circuitbench's
                                                     names, translated by `ac_name`), which circuitbench's
                                                     edge patching runs too

Ablation: resample with the counterfactual of the same prompt (AblationType.RESAMPLE, corrupt).
values: eap -> "attribution" [n_layers][n_heads] mean over prompts of (z_corr - z_clean) . dm/dz
(= -the node's mask gradient of auto-circuit's loss -mean logit diff) and "edges" {name: score};
exact_heads -> "patched" {"l.h": mean patched logit difference}; exact_edges -> the same by edge name.
"""
from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from common import Timer, ac_name, load_data, load_hooked_transformer, logit_diff, setup_threads, write

HEAD_STRIDE = 4  # heads (l, l mod n_heads) for l = 0, 4, 8: three patched forwards


def patchable(root: Path):
    from auto_circuit.utils.graph_utils import patchable_model

    model = load_hooked_transformer(root / "model")
    # what auto_circuit.experiment_utils.load_tl_model sets for edge patching
    model.cfg.use_attn_result = True
    model.cfg.use_attn_in = True
    model.cfg.use_split_qkv_input = True
    model.cfg.use_hook_mlp_in = True
    for p in model.parameters():
        p.requires_grad = False
    return patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True,
                           device=torch.device("cpu"))


def loader(data):
    from auto_circuit.data import PromptDataLoader, PromptDataset

    n = data["tokens"].shape[0]
    dataset = PromptDataset(data["tokens"], data["corrupted"], [data["answer"][i : i + 1] for i in range(n)],
                            [data["distractor"][i : i + 1] for i in range(n)])
    return PromptDataLoader(dataset, seq_len=None, diverge_idx=0, batch_size=n, shuffle=False)


def eap(model, data) -> dict:
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores

    scores = mask_gradient_prune_scores(model, loader(data), None, grad_function="logit", answer_function="avg_diff",
                                        mask_val=0.0)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    heads = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    edges = {}
    for edge in model.edges:
        value = -float(scores[edge.dest.module_name][edge.patch_idx])  # loss = -mean logit diff
        edges[edge.name] = value
        if edge.src.head_idx is not None:
            heads[int(edge.src.name[1:].split(".")[0]), edge.src.head_idx] += value  # name A{layer}.{head}
    return {"attribution": heads.tolist(), "edges": edges, "n_edges": len(edges)}


def _patched_metrics(model, data, groups: dict[str, set]) -> dict:
    """Mean patched logit difference per group of edges, with the time of the counterfactual run
    (the ablations) and of each patched forward, so a run over more units can be extrapolated."""
    import time

    from auto_circuit.types import AblationType
    from auto_circuit.utils.ablation_activations import src_ablations
    from auto_circuit.utils.graph_utils import patch_mode

    batch = next(iter(loader(data)))
    out, unit_seconds = {}, []
    with torch.inference_mode():
        t0 = time.perf_counter()
        ablations = src_ablations(model, batch.corrupt, AblationType.RESAMPLE)
        ablation_seconds = time.perf_counter() - t0
        for key, edges in groups.items():
            t0 = time.perf_counter()
            with patch_mode(model, ablations, edges):
                out[key] = float(logit_diff(model(batch.clean)[model.out_slice], data).mean())
            unit_seconds.append(time.perf_counter() - t0)
    return {"patched": out, "units": len(groups), "ablation_seconds": ablation_seconds, "unit_seconds": unit_seconds}


def head_groups(model) -> dict[str, set]:
    n_heads = model.cfg.n_heads
    wanted = {f"A{l}.{l % n_heads}": f"{l}.{l % n_heads}" for l in range(0, model.cfg.n_layers, HEAD_STRIDE)}
    groups: dict[str, set] = {key: set() for key in wanted.values()}
    for edge in model.edges:
        if edge.src.name in wanted:
            groups[wanted[edge.src.name]].add(edge)
    return groups


def edge_groups(model, root: Path) -> dict[str, set]:
    """{circuitbench name: {the auto-circuit edge}} for the edges of DIR/edges.json."""
    wanted = {}
    for name in json.loads((root / "edges.json").read_text()):
        src, dst = name.split("->")
        wanted[f"{ac_name(src)}->{ac_name(dst)}"] = name
    groups = {wanted[e.name]: {e} for e in model.edges if e.name in wanted}
    assert len(groups) == len(wanted), f"auto-circuit has no edge for {set(wanted) - {e.name for e in model.edges}}"
    return groups


def main() -> None:
    root, work, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    setup_threads()
    data = load_data(root)
    with Timer() as wrap:
        model = patchable(root)
    if work == "eap":
        fn = eap
    else:
        groups = head_groups(model) if work == "exact_heads" else edge_groups(model, root)
        fn = lambda m, d: _patched_metrics(m, d, groups)  # noqa: E731
    small = {k: v[:2] for k, v in data.items()}
    if work == "eap":
        fn(model, small)  # warm-up on two prompts (not timed)
    with Timer() as t:
        values = fn(model, data)
    write(out, {"tool": f"auto-circuit {version('auto-circuit')}", "work": work, "seconds": t.seconds,
                "wrap_seconds": wrap.seconds, "values": values})


if __name__ == "__main__":
    main()
