"""Shared by the peers' scripts (run in benchmarks/peers/.venv; never imports circuitbench).

Every script reads DIR/model (save_pretrained weights) and DIR/data.pt (clean and counterfactual
token ids of one length, answer and distractor ids), times one piece of work, and writes a JSON
record: {"seconds": ..., "values": {...}, ...}. The metric is the logit difference at END (the
last position): logit[answer] - logit[distractor].
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402


def setup_threads() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))


def load_data(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "data.pt")


def logit_diff(end_logits: torch.Tensor, data: dict[str, torch.Tensor]) -> torch.Tensor:
    """[n] logit difference from [n, vocab] logits at END."""
    rows = torch.arange(end_logits.shape[0])
    return (end_logits[rows, data["answer"]] - end_logits[rows, data["distractor"]]).double()


def load_hooked_transformer(model_dir: Path):
    """TransformerLens 2.x HookedTransformer with the saved GPT-2 weights, unprocessed (no LayerNorm
    folding, no centring, no value-bias folding), so its hook_z is the HF model's per-head output."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(model_dir)
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn="gelu_new",
        normalization_type="LN", eps=c.layer_norm_epsilon, original_architecture="GPT2LMHeadModel",
        positional_embedding_type="standard", default_prepend_bos=False, device="cpu",
    )
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    return model.eval()


def ac_name(node: str) -> str:
    """circuitbench's (EAP-IG's) node or node-input name -> auto-circuit's: input -> Resid Start,
    a3.h1 -> A3.1, a3.h1<q> -> A3.1.Q, m3 -> MLP 3, logits -> Resid End."""
    if node == "input":
        return "Resid Start"
    if node == "logits":
        return "Resid End"
    if node.startswith("m"):
        return f"MLP {node[1:]}"
    head, _, kind = node.partition("<")
    layer, h = head[1:].split(".h")
    return f"A{layer}.{h}" + (f".{kind[0].upper()}" if kind else "")


def write(out: Path, record: dict) -> None:
    record = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
              **record}
    out.write_text(json.dumps(record))


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
