"""`edge_pruning`: learned edge masks (Bhaskar et al. 2024, "Finding Transformer Circuits with Edge
Pruning", princeton-nlp/Edge-Pruning).

Every edge u -> v of the component graph gets a hard-concrete gate z_uv in [0, 1] (Louizos et al.
2018, as Edge Pruning's src/modeling/l0.py parametrises it): log α per edge, temperature β = 2/3,
stretch (l, r) = (−0.1, 1.1), z = clamp(l + (r − l)·σ((log u − log(1 − u) + log α) / β), 0, 1),
u ~ U(0, 1). Destination v reads Σ_u z_uv·a_u + (1 − z_uv)·a'_u (scores/edges.py masked_logits), a'
the source's output under the ablation (the counterfactual run's by default, as Edge Pruning's
corr_x; or a position-wise mean, or zero). One z is drawn per step and shared by the batch, as there.

The loss, minimised over log α with Adam, is a faithfulness term D plus a sparsity term on the
expected L0, E[L0] = Σ P(z_uv > 0) = Σ σ(log α − β·log(−l/r)) (Louizos et al. eq. 12). D is
KL(full ‖ masked) of the next-token distributions at the positions the task metric reads (END for
answer metrics, every real token for sequence metrics; Edge Pruning's KL over its target span), or
with `objective: task` the task metric's |m(full) − m(masked)| on the batch; either is divided by its
value with every edge ablated, D(∅) over all prompts, so that D is a share of the whole model's
effect (0: faithful, 1: nothing kept) whatever the model's scale. The sparsity term is
- by default a price, L = D + λ·E[L0]/N (`l0_lambda`, N edges): an edge stays when removing it costs
  more than λ/N of the effect (λ = 1: more than an even share), so the circuit finds its own size.
  MIB's UGS prices its Σ σ(θ) the same way, on the raw KL (λ = 1e-3 per edge);
- with `target_sparsity` t, Edge Pruning's Lagrangian L = D + λ₁·(s − t) + λ₂·(s − t)², s = 1 −
  E[L0]/N, λ₁, λ₂ trained by gradient ascent (Adam, `maximize`) and t rising linearly from 0 over the
  first `warmup` share of the steps: the circuit then has about (1 − t)·N edges, unless D resists.
Where we differ from Edge Pruning: its KL is not normalised and its sparsity is the sum of the
sampled gates (ours: the expected L0); masks are on edges only (its node masks are off in its
published sweeps, `--disable_node_loss`); plain Adam at a constant rate instead of AdamW with a
warmup schedule; log α starts at `init` (3; Edge Pruning 10) so that a CPU run of a few hundred
steps can move it.

What gradients cannot see. A gate's gradient flows through the model, so an edge into a saturated
softmax (tracr's hard attention: the queries and keys of tracr-hist's and tracr-sort-unique's a0.h0)
gets ~0 gradient although patching it changes the output: such edges are pruned as if unused (the
rankings of those models still put their nodes first). At the start, with every gate near 1, the KL's
gradient is ~0 too (the full model is its minimum): the price moves every gate down until some
matter.

Scores: P(z_uv > 0) per edge, in (0, 1) and monotone in log α, so the signed and |score| rankings
(CPR, CMD) coincide, and their sum is the expected edge count. Edge Pruning's own circuit at the end
keeps the round(E[L0]) edges of largest log α (its deterministic mask): `learned_edges` in the
settings is that count (`circuit: {level: edge, top_k: learned_edges}` reproduces it) and
`learned_loss` its D / D(∅) over all prompts. These are not effects on the metric (unlike eap or
edge_patching scores).

MIB's UGS (uniform gradient sampling; alestolfo/optimalablation edge_pruning_unif_mib.py with
mask_samplers/EdgeMaskSampler.py's EdgeMaskUnifSampler) is the same family, with another relaxation:
a per-edge θ, keep-probability p = σ(θ), gate 1 − clamp((u − p)/w + ½, 0, 1) with window w = p(1 − p)
(a straight-through uniform, not the hard concrete), 12 gate draws per batch with each draw's
dangling edges removed, the loss KL(full ‖ pruned) + λ·Σ σ(θ) on the raw KL (λ = 1e-3 in MIB's runs,
which is l0_lambda = 1e-3·N / D(∅) here) plus a tanh penalty per node, AdamW, and σ(θ) as the edge
score MIB ranks by (MIB's convert_mask_to_graph.py). Ours ranks by P(z > 0), the hard concrete's
keep-probability, in σ(θ)'s place.

Deterministic under `seed`: the initial log α noise and every step's u come from one torch.Generator.
Cost, in batch forwards: `forwards.setup` (the counterfactual run or the means' pass, then the full
and the all-ablated circuit forwards, per batch), `forwards.train` = steps, each one forward and one
backward of one batch through the masked model, and `forwards.evaluation` (the learned circuit).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import Batch, EncodedPrompts
from circuitbench.scores.ablations import parse_ablation
from circuitbench.scores.edges import check_edges, masked_logits, node_outputs
from circuitbench.scores.interventions import BaseRun, ablated_batches, oriented_metric
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import EdgePruningOptions
from circuitbench.scores.methods.outputs import EdgeScores, MethodOutput
from circuitbench.specs.registries import METRICS

BETA = 2 / 3  # hard-concrete temperature (Edge Pruning's TEMPERATURE)
LEFT, RIGHT = -0.1, 1.1  # stretch interval (LIMIT_LEFT, LIMIT_RIGHT)
EPS = 1e-6  # u is drawn from [EPS, 1 − EPS], as Edge Pruning draws it
INIT_STD = 0.01  # Edge Pruning's initial log α noise


def sample_gates(log_alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[n] one hard-concrete draw z = clamp(l + (r − l)·σ((logit u + log α)/β), 0, 1) per log α."""
    u = torch.rand(log_alpha.shape, generator=generator, dtype=torch.float64) * (1 - 2 * EPS) + EPS
    noise = (torch.log(u) - torch.log1p(-u)).to(log_alpha.device, log_alpha.dtype)
    s = torch.sigmoid((noise + log_alpha) / BETA)
    return torch.clamp(LEFT + (RIGHT - LEFT) * s, 0.0, 1.0)


def keep_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z > 0) = σ(log α − β·log(−l/r)) per gate: its expected L0 (Louizos et al. eq. 12)."""
    return torch.sigmoid(log_alpha - BETA * math.log(-LEFT / RIGHT))


@dataclass(frozen=True)
class Prepared:
    """One batch, ready for training: what masked-off edges carry and the full model's reference."""

    batch: Batch
    replacement: torch.Tensor  # [batch, pos, n_src, d_model] the sources' outputs under the ablation
    log_probs: torch.Tensor  # [batch, scored pos, d_vocab] the full model's next-token log-probabilities
    weights: torch.Tensor  # [batch, scored pos] 1 where the metric reads a position (KL averaged over them)
    m_full: torch.Tensor  # [batch] the full model's metric (higher is better)


def _scored_weights(metric: str, batch: Batch, width: int, device: torch.device) -> torch.Tensor:
    """[batch, width] the positions the KL term averages over: END (answer metrics: the logits are
    END's only), else every real token."""
    if METRICS.get(metric).needs_answer:
        return torch.ones(len(batch), 1, device=device)
    return (torch.arange(width)[None, :] < batch.lengths[:, None]).to(device, torch.float32)


def _prepare(model: LoadedModel, graph: ComponentGraph, data: EncodedPrompts, ctx: MethodContext,
             opts: EdgePruningOptions) -> tuple[list[Prepared], float]:
    """Every batch's replacement outputs and full-model reference, and D(∅): the faithfulness term
    with every edge ablated, over all prompts (what D is measured in)."""
    ablation = parse_ablation(opts.ablation)

    def sources(run: BaseRun) -> list[torch.Tensor]:
        return [node_outputs(model, run)]

    # 0/1 masks through the trained masks' forward (no gradient: nothing requires one), so that D at the
    # start and D(∅) are exactly what training computes
    ones = torch.ones(graph.real_edges.shape, device=model.device)
    prepared: list[Prepared] = []
    empty = 0.0
    for ablated in ablated_batches(ablation, model, data, ctx, view=sources):
        batch = ablated.batch
        replacement = ablated.values[0].clone()  # a plain tensor (base runs are inference tensors)
        # the full model through the same circuit forward (nothing patched), so that z = 1 gives D = 0 exactly
        logits, scored = masked_logits(model, graph, batch, ones, replacement, ctx)
        m_full = oriented_metric(ctx.metric, logits, scored).detach()
        weights = _scored_weights(ctx.metric, batch, logits.shape[1], logits.device)
        item = Prepared(batch, replacement, logits.float().log_softmax(-1).detach(), weights, m_full)
        prepared.append(item)
        empty_logits, empty_scored = masked_logits(model, graph, batch, 0 * ones, replacement, ctx)
        empty += float(_per_prompt(empty_logits, empty_scored, item, ctx, opts.objective).double().sum())
    n = sum(len(p.batch) for p in prepared)
    if not n:
        raise CircuitbenchError(f"edge_pruning on '{model.name}': no prompts to train the masks on.")
    scale = abs(empty) / n
    if scale < 1e-9:
        what = "next-token distributions" if opts.objective == "kl" else ctx.metric
        raise CircuitbenchError(f"edge_pruning on '{model.name}': the full model and the model with every edge "
                                f"ablated ({opts.ablation}) give the same {what}, so there is nothing for the masks to "
                                "keep. Use another ablation (method_options.edge_pruning.ablation) or objective.")
    return prepared, scale


def _per_prompt(logits: torch.Tensor, scored: Batch, item: Prepared, ctx: MethodContext,
                objective: str) -> torch.Tensor:
    """[batch] KL(full ‖ masked) averaged over each prompt's scored positions, or the task metric's
    drop m(full) − m(masked)."""
    if objective == "kl":
        log_q = logits.float().log_softmax(-1)
        kl = (item.log_probs.exp() * (item.log_probs - log_q)).sum(-1)  # [batch, pos]
        return (kl * item.weights).sum(-1) / item.weights.sum(-1).clamp(min=1)
    return item.m_full - oriented_metric(ctx.metric, logits, scored)


def _faithfulness_loss(logits: torch.Tensor, scored: Batch, item: Prepared, ctx: MethodContext,
                       objective: str, scale: float) -> torch.Tensor:
    """D as a share of D(∅): the batch's mean KL, or |mean drop| of the task metric."""
    return _per_prompt(logits, scored, item, ctx, objective).mean().abs() / scale


def _circuit_loss(model: LoadedModel, graph: ComponentGraph, prepared: list[Prepared], keep: np.ndarray,
                  ctx: MethodContext, opts: EdgePruningOptions, scale: float) -> float:
    """D / D(∅) over all prompts of the edge circuit `keep` ([n_src, n_dst] bool), every other edge ablated."""
    mask = torch.from_numpy(keep).to(model.device, torch.float32)
    total, n = 0.0, 0
    for item in prepared:
        logits, scored = masked_logits(model, graph, item.batch, mask, item.replacement, ctx)
        values = _per_prompt(logits, scored, item, ctx, opts.objective).double()
        total, n = total + float(values.sum()), n + len(values)
    return abs(total) / n / scale


def edge_pruning(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    opts = EdgePruningOptions.model_validate(ctx.options)
    check_edges(model, "edge_pruning")
    if opts.ablation in ("counterfactual", "mean_counterfactual") and data.corrupted is None:
        raise CircuitbenchError(f"edge_pruning: method_options.edge_pruning.ablation = {opts.ablation} needs "
                                "counterfactual prompts, and this task has none. Use ablation: mean_clean or zero.")
    if opts.ablation == "counterfactual" and not data.aligned:
        raise CircuitbenchError("edge_pruning: method_options.edge_pruning.ablation = counterfactual patches each "
                                "prompt's counterfactual position by position, and this task's counterfactuals may "
                                "have another token length. Use ablation: mean_counterfactual, mean_clean or zero.")
    graph = model.component_graph()
    prepared, scale = _prepare(model, graph, data, ctx, opts)
    rows, cols = (torch.from_numpy(a) for a in np.nonzero(graph.real_edges))
    n_edges = len(rows)
    generator = torch.Generator().manual_seed(opts.seed)
    init = opts.init + INIT_STD * torch.randn(n_edges, generator=generator, dtype=torch.float64)
    log_alpha = init.to(torch.float32).to(model.device).requires_grad_(True)
    lambdas = torch.zeros(2, device=model.device, requires_grad=True)  # the Lagrangian's (target_sparsity)
    optimizer = torch.optim.Adam([log_alpha], lr=opts.lr)
    ascent = torch.optim.Adam([lambdas], lr=opts.lambda_lr, maximize=True)
    warm = opts.warmup * opts.steps
    blank = torch.zeros(graph.real_edges.shape, device=model.device)
    faith = torch.zeros(())
    done = 0
    for step in range(opts.steps):
        item = prepared[step % len(prepared)]
        gates = sample_gates(log_alpha, generator)
        mask = blank.index_put((rows.to(model.device), cols.to(model.device)), gates)
        logits, scored = masked_logits(model, graph, item.batch, mask, item.replacement, ctx)
        faith = _faithfulness_loss(logits, scored, item, ctx, opts.objective, scale)
        expected = keep_probability(log_alpha).sum()
        if opts.target_sparsity is None:
            loss = faith + opts.l0_lambda * expected / n_edges
        else:
            target = opts.target_sparsity * (min(1.0, (step + 1) / warm) if warm > 0 else 1.0)
            excess = 1 - expected / n_edges - target
            loss = faith + lambdas[0] * excess + lambdas[1] * excess ** 2
        optimizer.zero_grad()
        ascent.zero_grad()
        loss.backward()
        optimizer.step()
        if opts.target_sparsity is not None:
            ascent.step()
        if not torch.isfinite(log_alpha).all():
            raise CircuitbenchError(f"edge_pruning on '{model.name}': the masks' log alpha became non-finite at step "
                                    f"{step + 1} (loss {float(loss):.4g}). Lower method_options.edge_pruning.lr.")
        reached = len(data) * (step + 1) // opts.steps
        ctx.advance(reached - done)
        done = reached
    keep = keep_probability(log_alpha.detach().double()).cpu()
    scores = np.zeros(graph.real_edges.shape)
    scores[rows.numpy(), cols.numpy()] = keep.numpy()
    total = float(keep.sum())
    learned = int(round(total))
    circuit = np.zeros(graph.real_edges.shape, dtype=bool)  # Edge Pruning's deterministic circuit: top E[L0]
    top = torch.argsort(log_alpha.detach().cpu(), descending=True, stable=True)[:learned]
    circuit[rows[top].numpy(), cols[top].numpy()] = True
    setup = len(prepared) * (2 + int(opts.ablation != "zero"))  # full, ∅ (+ counterfactual run or means' pass)
    return MethodOutput(edges=EdgeScores(graph, scores), settings={
        "method": "edge_pruning", "ablation": opts.ablation, "objective": opts.objective, "steps": opts.steps,
        "lr": opts.lr, "seed": opts.seed, "units": "P(mask > 0), the hard-concrete gate's keep-probability",
        "signed": False,  # a probability in (0, 1), not a signed effect (results/edge_score_meaning.py)
        **({"l0_lambda": opts.l0_lambda} if opts.target_sparsity is None else
           {"target_sparsity": opts.target_sparsity, "final_lambdas": [float(v) for v in lambdas.detach().cpu()]}),
        "final_loss": float(faith.detach()), "loss_scale": scale, "final_expected_edges": total,
        "learned_edges": learned, "learned_loss": _circuit_loss(model, graph, prepared, circuit, ctx, opts, scale),
        "n_edges": n_edges,
        "forwards": {"setup": setup, "train": opts.steps, "evaluation": len(prepared),
                     "train_is": "one forward and one backward of one batch"}})
