"""Visibility: on how many prompts a component's output differs between the clean run and its
counterfactual. Patching (exact, attribution, EAP, edge patching) measures what changes when a
component's clean output is swapped for its counterfactual one; a component whose two outputs are
the same on a prompt contributes exactly 0 there, whatever its role (a head reading BOS or the
sequence length, a lagged previous-token head the counterfactual keeps). Its patching score is
then not "unimportant" but unknown; ablations that do change it (zero, mean) can still tell."""
from __future__ import annotations

import torch

from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.alignment import aligns
from circuitbench.scores.interventions import Layout, base_runs
from circuitbench.scores.methods.context import MethodContext

VISIBLE_TOL = 1e-6  # relative: |clean − counterfactual| above VISIBLE_TOL × (1 + max |clean|) at some position
INVISIBLE_SHARE = 0.05  # visible on at most this share of prompts: invisible to patching


def _changed(clean: torch.Tensor, corrupt: torch.Tensor, valid: torch.Tensor, tol: float) -> torch.Tensor:
    """[batch] bool: the output differs at some real position ([batch, pos, ...] outputs, [batch, pos] mask)."""
    dims = tuple(range(2, clean.dim()))
    gap = (clean.double() - corrupt.double()).abs().amax(dim=dims) * valid
    scale = (clean.double().abs().amax(dim=dims) * valid).amax(dim=1)
    return gap.amax(dim=1) > tol * (1 + scale)


def node_names(model: LoadedModel, with_mlps: bool) -> list[str]:
    """Every head ('a0.h1') and, with `with_mlps`, MLP ('m0') of the model, in forward order."""
    return [name for l in range(model.n_layers)
            for name in [f"a{l}.h{h}" for h in range(model.n_heads)] + ([f"m{l}"] if with_mlps else [])]


def visibility(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext,
               tol: float = VISIBLE_TOL) -> dict[str, float]:
    """{node: share of prompts on which its output differs between the clean and counterfactual
    run}, for every head ('a0.h1') and MLP ('m0'); empty without counterfactual prompts. `data`
    may be one process's shard: counts go through ctx.sum_shards."""
    if data.corrupted is None:
        return {}
    names = node_names(model, model.has_mlp)
    index = {name: i for i, name in enumerate(names)}
    counts = torch.zeros(len(names), dtype=torch.float64)
    # counterfactuals of another length: compared span to span where they align (scores/alignment.py)
    layout: Layout = "clean" if aligns(data) else "own"
    for batch, runs in base_runs(model, data, ctx, ("clean", "corrupted"), layout=layout):
        clean, corrupt = runs["clean"], runs["corrupted"]
        valid = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).to(model.device)
        for l in range(model.n_layers):
            for h in range(model.n_heads):
                changed = _changed(clean.z[l][:, :, h], corrupt.z[l][:, :, h], valid, tol)
                counts[index[f"a{l}.h{h}"]] += float(changed.sum())
            if model.has_mlp:
                assert clean.mlp is not None and corrupt.mlp is not None
                counts[index[f"m{l}"]] += float(_changed(clean.mlp[l], corrupt.mlp[l], valid, tol).sum())
    counts, n = ctx.sum_shards((counts, len(data)))
    return {name: float(counts[i]) / n for i, name in enumerate(names)} if n else {}


def invisible_nodes(shares: dict[str, float], limit: float = INVISIBLE_SHARE) -> list[str]:
    """The nodes visible on at most `limit` of the prompts, in forward order."""
    return [node for node, share in shares.items() if share <= limit]
