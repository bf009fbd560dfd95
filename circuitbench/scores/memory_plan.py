"""How much memory an edge method will take, before it runs, and the largest chunks that fit a budget.

The gradient edge methods (eap, eap_ig) and exact edge patching hold tensors that grow with batch ×
sources: every source's counterfactual-minus-clean output [n_sources, batch, pos, d_model]
(scores/edges.py output_deltas), every block's assembled input gradients [destinations, batch, pos,
d_model], EAP-IG's sum of them over its steps. scores/chunking.py computes them in chunks (prompts
in sub-batches, sources a slice at a time, one block's destinations at a time); this module
predicts the peak of each method from the model's shape, the prompts' length and those chunk sizes,
and picks the largest that fit a budget (`plan_memory`).

The prediction is a sum of the tensors alive at each phase of the method, in bytes of the model's
dtype: the weights, the unpatched runs kept per batch (block inputs, head and MLP outputs), the
forward-and-backward's saved activations (per token and layer: a multiple of d_model and of d_mlp,
and the attention pattern's n_heads × pos), the gradients kept from it, the output deltas of one
source slice, and one block's gradient assembly (its norm's vector-Jacobian product holds a few
copies of [destinations, batch, pos, d_model]). The phase coefficients were fitted to the peak RSS
of these methods on GPT-2 small and checked on GPT-2 medium (`make bench`: benchmarks/memory.py
prints predicted against measured)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph
from circuitbench.specs.byte_size import format_bytes
from circuitbench.specs.model import BYTES_PER_PARAM

if TYPE_CHECKING:
    from circuitbench.models.loaded import LoadedModel

EdgeMethod = Literal["eap", "eap_ig", "edge_patching"]
PLANNED: tuple[str, ...] = ("eap", "eap_ig", "edge_patching")
# The default budget: the weights plus this share of the memory free once they are loaded.
FREE_SHARE = 0.5
# Phase coefficients (bytes per element of the model's dtype, per token unless said), fitted to
# measured peaks (module docstring).
FORWARD_D, FORWARD_MLP, FORWARD_ATTN = 10.0, 3.0, 3.0  # a no-grad forward's live block (per token)
GRAPH_D, GRAPH_MLP, GRAPH_ATTN = 14.0, 6.0, 4.0  # forward-with-backward: saved per token and layer
ASSEMBLY = 8.0  # copies of one block's [destinations, batch, pos, d_model] alive while it is assembled
LOGITS = 4.0  # copies of the unembedded logits (the metric's log-softmax and its gradient)
OVERHEAD = 1.08  # allocator slack on the activations (fragmentation, pages freed late)
# Held once the model has run, whatever the batch: the weights' resident extra (views, caches) and
# a copy of the unembedding made by the backward (~200 MB on GPT-2 small).
RESIDENT_EXTRA, UNEMBED_COPIES = 0.1, 1.0
# The plan aims at this share of the budget: the prediction is good to about ±25 %, and a budget is a ceiling.
HEADROOM = 0.9


@dataclass(frozen=True)
class ModelShape:
    """What the prediction reads of a model: its config and dtype (from a loaded model or a config)."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int  # 0: attention only
    d_vocab: int
    n_params: int
    dtype: str
    n_sources: int  # the component graph's sources (input, heads, MLPs)
    destinations_per_layer: int  # a block's node inputs (each head's q, k, v; the MLP's)

    @property
    def element(self) -> int:
        return BYTES_PER_PARAM.get(self.dtype, 4)

    @property
    def weight_bytes(self) -> int:
        return self.n_params * self.element

    @classmethod
    def of(cls, model: LoadedModel) -> ModelShape:
        graph = model.component_graph()
        d_mlp = 4 * model.d_model if model.has_mlp else 0  # the usual width (LoadedModel does not say it)
        return cls(n_layers=model.n_layers, n_heads=model.n_heads, d_model=model.d_model, d_head=model.d_head,
                   d_mlp=d_mlp, d_vocab=model.d_vocab, n_params=model.n_params, dtype=model.dtype,
                   n_sources=len(graph.sources), destinations_per_layer=graph.per_block)

    @classmethod
    def of_config(cls, n_layers: int, n_heads: int, d_model: int, d_vocab: int, n_params: int, dtype: str = "float32",
                  d_mlp: int | None = None, has_mlp: bool = True) -> ModelShape:
        """From config numbers (models.yaml, a HF config): heads of d_model / n_heads, d_mlp 4·d_model."""
        mlp = (d_mlp or 4 * d_model) if has_mlp else 0
        graph = ComponentGraph(n_layers, n_heads, has_mlp=has_mlp)
        return cls(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_head=d_model // n_heads, d_mlp=mlp,
                   d_vocab=d_vocab, n_params=n_params, dtype=dtype, n_sources=len(graph.sources),
                   destinations_per_layer=graph.per_block)


class MemoryPlan(BaseModel):
    """One edge method's chunk sizes under a memory budget, and its predicted peak
    (scores/memory_plan.py); recorded in the method's settings as `memory`."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field(description="the edge method planned (eap, eap_ig, edge_patching)")
    budget_bytes: int = Field(description="the memory budget: weights and the method's tensors together")
    budget_from: Literal["max_memory", "free_memory"] = Field(
        description="max_memory: given (--max-memory); free_memory: the default, the weights plus "
        f"{FREE_SHARE:.0%} of the memory free when the method starts")
    weight_bytes: int = Field(description="the weights: parameters × bytes of the dtype")
    predicted_peak_bytes: int = Field(description="predicted peak of the weights and the method's tensors")
    batch_size: int = Field(description="prompts per sub-batch (at most the run's batch size)")
    source_chunk: int = Field(description="sources whose output deltas are held at once (all: unchunked)")
    n_sources: int = Field(description="the component graph's sources")
    sum_steps: bool = Field(True, description="eap_ig: destination gradients summed over the steps, then contracted "
                            "once (False: each step contracted as it comes, nothing summed)")

    @property
    def chunked(self) -> bool:
        return self.source_chunk < self.n_sources or not self.sum_steps

    def line(self, run_batch_size: int) -> str:
        """'eap: batch 8 of 64, sources 157/157 (unchunked), peak ≈ 0.93 GB of 1.00 GB (--max-memory)'."""
        sources = "all sources" if self.source_chunk >= self.n_sources else \
            f"sources {self.source_chunk} of {self.n_sources} at a time"
        batch = f"batch {self.batch_size}" + (f" of {run_batch_size}" if self.batch_size < run_batch_size else "")
        steps = "" if self.sum_steps or self.method != "eap_ig" else ", steps contracted one by one"
        where = "--max-memory" if self.budget_from == "max_memory" else "default: weights + half the free memory"
        return (f"{self.method}: {batch}, {sources}{steps}; peak ≈ {format_bytes(self.predicted_peak_bytes)} of "
                f"{format_bytes(self.budget_bytes)} ({where})")


@dataclass(frozen=True)
class Workload:
    """What a method's peak depends on besides the model: the prompts and how they are run."""

    seq_len: int  # the widest prompt (padded width), tokens
    answer_metric: bool = True  # only END is unembedded (answer metrics); else every position
    steps: int = 1  # eap_ig: gradient passes per batch
    copy_rows: int | None = None  # edge_patching: most rows stacked in one patched forward (None: 512 tokens' worth)
    cached_prompts: int = 0  # prompts whose unpatched runs an activation cache holds in memory


def _run_bytes(s: ModelShape, tokens: int) -> float:
    """An unpatched run kept for later: every block's input, head outputs (and MLP output)."""
    return tokens * s.n_layers * (s.d_model * (1 + int(s.d_mlp > 0)) + s.n_heads * s.d_head) * s.element


def _forward_bytes(s: ModelShape, batch: int, seq: int, answer: bool) -> float:
    """A no-grad forward's live tensors: one block's activations and the logits."""
    tokens = batch * seq
    block = tokens * (FORWARD_D * s.d_model + FORWARD_MLP * s.d_mlp + FORWARD_ATTN * s.n_heads * seq)
    return (block + LOGITS * (batch if answer else tokens) * s.d_vocab) * s.element


def _graph_bytes(s: ModelShape, batch: int, seq: int, answer: bool) -> float:
    """A forward with its backward: every block's saved activations, and the logits."""
    tokens = batch * seq
    saved = tokens * s.n_layers * (GRAPH_D * s.d_model + GRAPH_MLP * s.d_mlp + GRAPH_ATTN * s.n_heads * seq)
    return (saved + LOGITS * (batch if answer else tokens) * s.d_vocab) * s.element


def _gradient_bytes(s: ModelShape, tokens: int) -> float:
    """InputGradients kept after a backward: q, k, v and MLP-input gradients, the block inputs and
    MLP reads, the head and MLP outputs, the final stream's gradient."""
    mlp = int(s.d_mlp > 0)
    per_layer = 4 * s.n_heads * s.d_head + s.d_model * (1 + 3 * mlp)
    return tokens * (s.n_layers * per_layer + s.d_model) * s.element


def _assembly_bytes(s: ModelShape, tokens: int) -> float:
    """One block's destination gradients being assembled (layer_input_gradients)."""
    return ASSEMBLY * s.destinations_per_layer * tokens * s.d_model * s.element


def predict_peak(method: str, shape: ModelShape, work: Workload, batch_size: int, source_chunk: int,
                 sum_steps: bool = True) -> int:
    """Predicted peak bytes (weights included) of `method` at these chunk sizes."""
    s, b, p = shape, batch_size, work.seq_len
    tokens = b * p
    e = s.element
    deltas = min(source_chunk, s.n_sources) * tokens * s.d_model * e
    cached = 2 * _run_bytes(s, work.cached_prompts * p)
    if method == "eap":
        corrupt = _run_bytes(s, tokens)
        backward = _graph_bytes(s, b, p, work.answer_metric)
        contraction = _gradient_bytes(s, tokens) + deltas + _assembly_bytes(s, tokens)
        working = corrupt + max(backward, contraction)
    elif method == "eap_ig":
        runs = 2 * _run_bytes(s, tokens)
        grads = _gradient_bytes(s, tokens)
        backward = _graph_bytes(s, b, p, work.answer_metric)
        if sum_steps:
            summed = s.n_layers * s.destinations_per_layer * tokens * s.d_model * e
            working = runs + grads + summed + max(backward, _assembly_bytes(s, tokens), deltas)
        else:
            held = s.n_sources * tokens * s.d_model * e if source_chunk >= s.n_sources else deltas
            working = runs + grads + max(backward, held + _assembly_bytes(s, tokens))
    elif method == "edge_patching":
        runs = 2 * _run_bytes(s, tokens)
        rows = work.copy_rows if work.copy_rows is not None else max(1, 512 // max(p, 1))
        copies = max(1, min(rows // max(b, 1), s.n_sources * s.destinations_per_layer)) * b
        # the stacked copies: a forward of copies × pos tokens, the repeated block input and each edit's clone
        stacked = _forward_bytes(s, copies, p, work.answer_metric) + 4 * copies * p * s.d_model * e
        working = runs + deltas + stacked
    else:
        raise ValueError(f"no memory model for method '{method}'")
    fixed = RESIDENT_EXTRA * s.weight_bytes + UNEMBED_COPIES * s.d_vocab * s.d_model * e
    return int(s.weight_bytes + fixed + OVERHEAD * (working + cached))


def _chunk_sizes(n: int) -> list[int]:
    """Source chunks tried, largest first: all, then halves down to one source."""
    sizes, k = [], n
    while k >= 1:
        sizes.append(k)
        k = k // 2 if k > 1 else 0
    return sizes


def plan_memory(method: str, shape: ModelShape, work: Workload, batch_size: int, budget: int,
                budget_from: Literal["max_memory", "free_memory"] = "max_memory", n_prompts: int | None = None,
                model_name: str = "the model", whole_sources: bool = False) -> MemoryPlan:
    """The largest sub-batch (at most `batch_size`, and `n_prompts`), then the largest source chunk, whose
    predicted peak fits `budget`; for eap_ig summing the steps' gradients when that fits, else contracting each
    step as it comes; all aiming at HEADROOM of the budget (`whole_sources`: every source's deltas at once, as
    per-span scores need them). A CircuitbenchError naming the budget and the minimum when nothing fits."""
    if method not in PLANNED:
        raise ValueError(f"no memory model for method '{method}'")
    most = max(1, min(batch_size, n_prompts or batch_size))

    def plan(b: int, chunk: int, summed: bool) -> MemoryPlan:
        return MemoryPlan(method=method, budget_bytes=budget, budget_from=budget_from, weight_bytes=shape.weight_bytes,
                          predicted_peak_bytes=predict_peak(method, shape, work, b, chunk, summed), batch_size=b,
                          source_chunk=chunk, n_sources=shape.n_sources, sum_steps=summed)

    flag = "--max-memory" if budget_from == "max_memory" else "the default memory budget (half the free memory)"
    if shape.weight_bytes >= budget:
        raise CircuitbenchError(
            f"{method} on '{model_name}': {flag} {format_bytes(budget)} is below the weights alone "
            f"({format_bytes(shape.weight_bytes)}: {shape.n_params / 1e6:,.0f}M parameters in {shape.dtype}). Give "
            "--max-memory above that, or load the model in bfloat16 (--dtype bfloat16).")
    sums = (True, False) if method == "eap_ig" else (True,)
    # a source chunk below a quarter of the sources recomputes each block's gradients four times or more:
    # fewer prompts per sub-batch first, then smaller source chunks at one prompt
    wide = [c for c in _chunk_sizes(shape.n_sources) if 4 * c >= shape.n_sources and (c == shape.n_sources
                                                                                       or not whole_sources)]
    for b in range(most, 0, -1):
        for summed in sums:
            for chunk in wide:
                candidate = plan(b, chunk, summed)
                if candidate.predicted_peak_bytes <= HEADROOM * budget:
                    return candidate
    for chunk in _chunk_sizes(shape.n_sources)[:1 if whole_sources else None]:
        candidate = plan(1, chunk, False if method == "eap_ig" else True)
        if candidate.predicted_peak_bytes <= HEADROOM * budget:
            return candidate
    smallest = plan(1, shape.n_sources if whole_sources else 1, False if method == "eap_ig" else True)
    raise CircuitbenchError(
        f"{method} on '{model_name}': {flag} {format_bytes(budget)} is below the minimum for one prompt of "
        f"{work.seq_len} tokens{'' if whole_sources else ', one source at a time'}: about "
        f"{format_bytes(smallest.predicted_peak_bytes / HEADROOM)} (the "
        f"weights {format_bytes(shape.weight_bytes)}, the method's tensors and {1 - HEADROOM:.0%} headroom). Give "
        f"--max-memory of at least {format_bytes(smallest.predicted_peak_bytes / HEADROOM)}, shorter prompts, or a "
        "smaller dtype.")


def default_budget(model: LoadedModel) -> int:
    """The weights plus FREE_SHARE of the memory free now (on the model's device)."""
    from circuitbench.models.memory import available_memory_bytes

    return model.n_params * BYTES_PER_PARAM.get(model.dtype, 4) + int(FREE_SHARE * available_memory_bytes(model.device))
