"""Test helpers shared by several test folders (tests/ is on sys.path through its conftest)."""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from circuitbench.cli import main
from circuitbench.models import hooks


def cli(capsys, *args: str) -> tuple[int, str, str]:
    sys_argv = sys.argv
    sys.argv = ["circuitbench", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = sys_argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@contextmanager
def library_log(level: int = logging.INFO) -> Iterator[list[str]]:
    """The messages the library logs (circuitbench.*) inside the block, at `level` and above. Read on
    the "circuitbench" logger itself: after an in-process CLI call it no longer propagates to the root
    logger that pytest's caplog listens on."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("circuitbench"), Keep(level)
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def with_undefined_faithfulness(result):  # RunResult -> RunResult (annotations would import the schema here)
    """The result as a model with no measurable effect would give it: faithfulness undefined, with the reason."""
    f = result.circuit.faithfulness.model_copy(update={
        "value": None, "cpr": None, "cmd": None, "curve": [], "by_ablation": {"mean_counterfactual": None},
        "undefined": "|m(M) − m(∅)| = 0.0003 is within noise", "gap_stderr": 0.002})
    candidates = [k.model_copy(update={"faithfulness": None}) for k in result.circuit.candidates]
    c = result.circuit.model_copy(update={"faithfulness": f, "candidates": candidates})
    return result.model_copy(update={"circuit": c})


def destination_hooks(model, clean, dst, replace):
    """Hooks that make destination input `dst` read replace(its live pre-norm input), in a full forward: a
    head's q/k/v projection input is rebuilt with the block's norm and only that head keeps its new output
    (a key-value group's input `a{L}.kv{G}<k|v>`: the group's r = n_heads / n_kv_heads heads G·r … G·r + r − 1
    keep theirs); an MLP reads the stream after attention (the block input in parallel blocks)."""
    n = model.n_layers
    if dst == "logits":
        return [(hooks.resid_post(n - 1), replace)]
    live = {}
    if dst.startswith("a"):
        node, kind = dst.split("<")[0], dst[-2]
        layer = int(node[1:].split(".")[0])
        if ".kv" in node:
            per_group = model.n_heads // model.n_kv_heads
            group = int(node.split(".kv")[1])
            heads = list(range(group * per_group, (group + 1) * per_group))
        else:
            heads = [int(node.split(".h")[1])]

        def keep_head(z):
            out = clean.z[layer].clone() if not z.requires_grad else z.detach().clone()
            out[:, :, heads] = z[:, :, heads]
            return out
        return [(hooks.resid_pre(layer), lambda x: live.__setitem__("x", x)),
                (hooks.projection_input(kind, layer),
                 lambda y: model.normalize_attention_input(layer, replace(live["x"]))),
                (hooks.head_outputs(layer), keep_head)]
    layer = int(dst[1:])
    read = hooks.resid_pre(layer) if model.parallel_attn_mlp else hooks.resid_mid(layer)
    return [(read, lambda x: live.__setitem__("x", x)),
            (hooks.mlp_in(layer), lambda y: model.normalize_mlp_input(layer, replace(live["x"])))]


def destination_gradient(model, clean, batch, dst, metric="logit_diff"):
    """[batch, pos, d_model] ∂(Σ metric)/∂x_v at destination `dst`'s own pre-norm input, from a probe added to
    it in a full forward (destination_hooks): the gradient EAP's formula multiplies by each source's delta."""
    import torch

    from circuitbench.scores.interventions import oriented_metric

    probe = {}

    def add_probe(x):
        probe["p"] = torch.zeros_like(x, requires_grad=True)
        return x + probe["p"]

    with model.frozen_weights(), torch.enable_grad():
        logits = model.run_with_hooks(batch.tokens, destination_hooks(model, clean, dst, add_probe), grad=True)
        (grad,) = torch.autograd.grad(oriented_metric(metric, logits, batch).sum(), probe["p"])
    return grad


def naive_edge_metrics(model, graph, batch, clean, delta, edges):
    """[len(edges)] the summed oriented logit_diff with each edge (i, j) patched alone, one full
    forward per edge: destination j reads its live input plus delta[:, :, i] (source i's
    counterfactual − clean output, [batch, pos, n_src, d_model])."""
    import torch

    from circuitbench.scores.interventions import oriented_metric

    naive = torch.zeros(len(edges), dtype=torch.float64)
    for k, (i, j) in enumerate(edges):
        step = delta[:, :, i]
        logits = model.run_with_hooks(batch.tokens, destination_hooks(model, clean, graph.destinations[j],
                                                                       lambda x, _s=step: x + _s))
        naive[k] = oriented_metric("logit_diff", logits, batch).double().sum()
    return naive
