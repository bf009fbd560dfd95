"""The shipped toy zoo: recipes that train each embedded model from scratch with a local seed.

`toy-induction-2l`: a 2-layer attention-only transformer trained on repeated random tokens.
The repeat length changes from batch to batch; with a fixed length the model can learn a
positional shortcut ("attend L back") instead of induction heads.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from circuitbench.environment import threads_for, torch_threads
from circuitbench.errors import CircuitbenchError, did_you_mean
from circuitbench.models.tokenizers import word_level_tokenizer
from circuitbench.models.toy import build_native_model, native_config, save_checkpoint
from circuitbench.training.planted import PLANTED, zoo_trainer


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    seed: int = 0
    batch_size: int = 64
    lr: float = 2e-3


@dataclass(frozen=True)
class Recipe:
    train: Callable[[Path, TrainSettings, Callable[[int, float], None]], dict[str, float]]
    default_steps: int
    description: str
    n_params: int  # the model's size (threads are chosen by it)

    def total_steps(self, steps: int | None = None) -> int:
        """The steps a training runs: `steps`, else the recipe's."""
        return steps or self.default_steps


def induction_batch(gen: torch.Generator, batch: int, n_symbols: int, min_len: int, max_len: int,
                    seq_len: int, bos: int, first_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [batch, seq_len], answer mask [batch, seq_len - 1]). Tokens: BOS + random symbols
    in which each row copies a segment A of its own length L (min_len..max_len) from a random
    offset to a random later one. Lengths, offsets and gaps differ row by row, so neither
    position nor distance tells where a copy goes on: only content (prefix matching) does, which
    is what induction heads do. The mask marks the next-token targets that context predicts: the
    copy after its first token (target i is token i + 1)."""
    tokens = torch.randint(0, n_symbols, (batch, seq_len), generator=gen) + first_id
    tokens[:, 0] = bos
    answers = torch.zeros(batch, seq_len - 1, dtype=torch.bool)
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=gen)
    for row in range(batch):
        length = int(lengths[row])
        src = 1 + int(torch.randint(0, seq_len - 2 * length, (1,), generator=gen))
        dst = src + length + int(torch.randint(0, seq_len - src - 2 * length + 1, (1,), generator=gen))
        tokens[row, dst : dst + length] = tokens[row, src : src + length]
        answers[row, dst : dst + length - 1] = True  # predicting tokens dst+1 .. dst+length-1
    return tokens, answers


def train_induction_2l(out: Path, settings: TrainSettings, report: Callable[[int, float], None]) -> dict[str, float]:
    n_symbols, min_len, max_len, seq_len = 64, 6, 30, 64
    tokenizer = word_level_tokenizer([f"t{i}" for i in range(n_symbols)])
    first_id = 3  # after <bos>, <pad>, <unk>
    config = native_config(n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=64,
                           d_vocab=len(tokenizer), attn_only=True)
    model = build_native_model(config, settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    t0 = time.perf_counter()
    model.train()
    for step in range(1, settings.steps + 1):
        tokens, _ = induction_batch(gen, settings.batch_size, n_symbols, min_len, max_len, seq_len,
                                 tokenizer.bos_token_id, first_id)
        logits = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        report(step, float(loss.detach()))
    model.eval()
    record = {"recipe": "toy-induction-2l", "steps": settings.steps, "seed": settings.seed,
              "batch_size": settings.batch_size, "lr": settings.lr, "train_seconds": round(time.perf_counter() - t0, 1),
              "data": f"BOS + {seq_len - 1} random of {n_symbols} symbols; per row a segment of "
                      f"{min_len}..{max_len} copied from a random offset to a random later one"}
    save_checkpoint(out, model, config, tokenizer, record)
    return {"final_loss": float(loss.detach())}


RECIPES: dict[str, Recipe] = {
    "toy-induction-2l": Recipe(train_induction_2l, 4000, "2-layer attention-only, repeated random tokens", 46336),
    # planted-circuit models: a tracr program plus trained, causally irrelevant distractors (training/planted.py)
    **{name: Recipe(zoo_trainer(name), r.steps, r.description, r.n_params) for name, r in PLANTED.items()},
}


def recipe_of(name: str) -> Recipe:
    if name not in RECIPES:
        raise CircuitbenchError(
            f"Unknown zoo model '{name}'.{did_you_mean(name, RECIPES)} Known: {', '.join(RECIPES)}.")
    return RECIPES[name]


def zoo_output_dir(name: str, out: Path | None = None) -> Path:
    """Where a retrained zoo model goes: `out`, else results/zoo/NAME (the shipped checkpoint,
    ZOO_DIR/NAME, only when asked for)."""
    return out or Path("results") / "zoo" / name


def train_zoo_model(name: str, out: Path | None = None, steps: int | None = None, seed: int = 0,
                    report: Callable[[int, float], None] = lambda step, loss: None,
                    threads: int | None = None) -> tuple[Path, dict[str, float]]:
    """Train zoo model `name` by its recipe into `out` (default: `zoo_output_dir`) with `threads`
    torch threads (default: by the model's size)."""
    recipe = recipe_of(name)
    target = zoo_output_dir(name, out)
    with torch_threads(threads_for(recipe.n_params, threads)):
        summary = recipe.train(target, TrainSettings(steps=recipe.total_steps(steps), seed=seed), report)
    return target, summary
