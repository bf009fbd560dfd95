"""Train toy models on the suite's tasks: `circuitbench train`.

Text tasks train on their *train* split (the test split is never seen); the vocabulary is a
word-level one built by the project from every split's prompts, so test prompts tokenize too.
`induction` trains on a synthetic stream of random tokens with a copied segment at random
offsets (see zoo.induction_batch): repeated prompts of one fixed layout teach a positional
shortcut instead. Checkpoints (log-spaced and linear in steps) are toy checkpoint directories
that `--model` accepts; training is seeded with local generators and reproducible.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.catalog import expand_task_names, load_task
from circuitbench.errors import CircuitbenchError, did_you_mean
from circuitbench.models.tokenizers import word_level_tokenizer
from circuitbench.models.toy import build_native_model, native_config, save_checkpoint
from circuitbench.models.zoo import induction_batch


class ToyArch(BaseModel):
    """A small native transformer."""

    model_config = ConfigDict(extra="forbid")
    n_layers: int = Field(2, ge=1, le=12)
    n_heads: int = Field(4, ge=1, le=16)
    d_model: int = Field(64, ge=8, le=1024)
    n_ctx: int = Field(64, ge=8, le=2048)
    attn_only: bool = True
    d_mlp: int | None = None


ARCH_PRESETS: dict[str, ToyArch] = {
    "attn-only-1l": ToyArch(n_layers=1),
    "attn-only-2l": ToyArch(n_layers=2),
    "gpt-2l": ToyArch(n_layers=2, attn_only=False, d_model=128),
    "sort-1l1h": ToyArch(n_layers=1, n_heads=1, d_model=128, attn_only=False),
}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arch: ToyArch
    tasks: list[str] = Field(min_length=1)
    steps: int = Field(1000, ge=1)
    checkpoints: int = Field(8, ge=0, le=200)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    seed: int = 0
    n_train: int = Field(4000, ge=1, description="train-split prompts drawn per text task (at most)")
    induction_share: float = Field(0.5, gt=0, le=1, description="fraction of steps on the induction stream when text tasks are mixed in")


def checkpoint_steps(steps: int, k: int) -> list[int]:
    """About k steps, half log-spaced (early dynamics) and half linear, always ending at `steps`."""
    if k <= 0:
        return [steps]
    logs = {max(1, round(math.exp(math.log(steps) * (i + 1) / (k // 2 + 1)))) for i in range(k // 2)}
    lins = {round(steps * (i + 1) / (k - k // 2)) for i in range(k - k // 2)}
    # a log-spaced step within 10% of a linear one adds nothing but a spurious steep interval
    logs = {s for s in logs if all(abs(s - l) > 0.1 * l for l in lins)}
    return sorted((logs | lins | {steps}) - {0})


def _words(text: str) -> list[str]:
    return [w for w in text.replace(",", " , ").replace(".", " . ").replace(";", " ; ").replace("|", " | ").split()]


def _text_examples(task: str, n_train: int) -> tuple[list[str], set[str]]:
    """(train-split texts = prompt + answer, every word of every split) for one text task."""
    from circuitbench.runner import effective_spec, generate_prompts
    from circuitbench.spec import RunOptions

    spec = load_task(task)
    words: set[str] = set()
    texts: list[str] = []
    for split in ("train", "val", "test"):
        n = n_train if split == "train" else None
        spec_split = effective_spec(spec.model_copy(update={"n_prompts": "all"}), RunOptions(split=split, n=n))
        for p in generate_prompts(spec_split).prompts:
            for t in (p.text, p.answer or "", p.distractor or "", p.corrupted_text or ""):
                words.update(_words(t))
            if split == "train":
                texts.append(p.text + (p.answer or ""))
    return texts, words


def train(config: TrainConfig, out: Path, report: Callable[[int, float], None] = lambda s, l: None) -> dict[str, object]:
    from circuitbench.prompts import GENERATORS

    text_tasks, induction = [], None
    for task in expand_task_names(config.tasks):
        spec = load_task(task)
        if GENERATORS.get(spec.generator.name).has_answer:
            text_tasks.append(task)
        elif spec.generator.name == "induction":
            induction = spec.generator  # its symbol count and repeat lengths shape the stream
        else:
            raise CircuitbenchError(f"train: task '{task}' has no training data recipe.")
    texts: list[str] = []
    words: set[str] = set()
    row_task: list[int] = []
    for i, task in enumerate(text_tasks):
        t, w = _text_examples(task, config.n_train)
        texts += t
        words |= w
        row_task += [i] * len(t)
    # every task equally often, however many distinct prompts its train split holds
    task_sizes = torch.bincount(torch.tensor(row_task, dtype=torch.long), minlength=len(text_tasks)) if row_task else None
    row_weights = (1.0 / task_sizes[torch.tensor(row_task)]).double() if row_task else None
    symbols = [f"t{i}" for i in range(induction.n_symbols)] if induction else []
    # the stream: one copied segment per row, room for a gap, within the context
    stream_len = min(config.arch.n_ctx, 2 * induction.max_len + 12) if induction else 0
    tokenizer = word_level_tokenizer(sorted(words | set(symbols)))
    vocab = tokenizer.get_vocab()
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    rows = [[bos] + [vocab[w] for w in _words(t)] for t in texts]
    if rows and max(map(len, rows)) > config.arch.n_ctx:
        raise CircuitbenchError(f"train: prompts of {max(map(len, rows))} tokens exceed n_ctx={config.arch.n_ctx}.")
    width = max(map(len, rows)) if rows else 0
    data = torch.full((len(rows), max(width, 1)), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        data[i, : len(r)] = torch.tensor(r)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    symbol_ids = sorted(vocab[s] for s in symbols)
    # induction prompts on this model draw from the stream's symbols, not from its text words
    pool = [vocab[s] for s in symbols] if symbols and rows else None

    arch = config.arch
    cfg = native_config(n_layers=arch.n_layers, d_model=arch.d_model, n_heads=arch.n_heads,
                        d_head=arch.d_model // arch.n_heads, n_ctx=arch.n_ctx, d_vocab=len(tokenizer),
                        attn_only=arch.attn_only, d_mlp=arch.d_mlp)
    model = build_native_model(cfg, config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    saves = set(checkpoint_steps(config.steps, config.checkpoints))
    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    for step in range(1, config.steps + 1):
        # deterministic interleaving: induction on `induction_share` of the steps (0.5: every even step)
        share = config.induction_share
        use_induction = induction is not None and (not rows or math.floor(step * share) != math.floor((step - 1) * share))
        if use_induction:
            max_len = min(induction.max_len, (stream_len - 1) // 2)
            batch = induction_batch(gen, config.batch_size, len(symbol_ids), min(4, max_len), max_len,
                                    stream_len, bos, symbol_ids[0])
            targets_mask = torch.ones_like(batch[:, 1:], dtype=torch.bool)
        else:
            if len(text_tasks) == 1:  # (the draw the shipped single-task toys were trained with)
                idx = torch.randint(0, len(rows), (config.batch_size,), generator=gen)
            else:
                idx = torch.multinomial(row_weights, config.batch_size, replacement=True, generator=gen)
            batch = data[idx][:, : int(lengths[idx].max())]  # no all-padding columns
            targets_mask = batch[:, 1:] != pad
        logits = model(batch)
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none")
        loss = (nll * targets_mask.reshape(-1)).sum() / targets_mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        report(step, losses[-1])
        if step in saves:
            model.eval()
            record = {"trainer": "circuitbench train", "step": step, **config.model_dump(mode="json")}
            save_checkpoint(out / "checkpoints" / f"step_{step:06d}", model, cfg, tokenizer, record, pool)
            model.train()
    model.eval()
    # the final model also sits at OUT itself, so `--model OUT` is the trained model
    save_checkpoint(out, model, cfg, tokenizer, {"trainer": "circuitbench train", "step": config.steps,
                                                 **config.model_dump(mode="json")}, pool)
    summary = {"final_loss": losses[-1], "train_seconds": round(time.perf_counter() - t0, 1), "steps": config.steps,
               "checkpoints": sorted(saves)}
    (out / "training_log.json").write_text(json.dumps({"config": config.model_dump(mode="json"), "loss": losses, **summary}) + "\n")
    return summary


def arch_from(name: str, **overrides: object) -> ToyArch:
    if name not in ARCH_PRESETS:
        raise CircuitbenchError(f"Unknown --arch '{name}'.{did_you_mean(name, ARCH_PRESETS)} Known: {', '.join(ARCH_PRESETS)}.")
    values = {k: v for k, v in overrides.items() if v is not None}
    return ARCH_PRESETS[name].model_copy(update=values)
