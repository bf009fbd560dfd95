"""Train toy models on the suite's tasks: `circuitbench train`.

Text tasks train on their *train* split (the test split is never seen); the vocabulary is a
word-level one built by the project from every split's prompts, so test prompts tokenize too.
`induction` trains on a synthetic stream of random tokens with a copied segment at random
offsets (see training/zoo.py, induction_batch): repeated prompts of one fixed layout teach a positional
shortcut instead. Checkpoints (log-spaced and linear in steps) are toy checkpoint directories
that `--model` accepts; training is seeded with local generators and reproducible.

What is trained is a `TrainConfig` (training/config.py). Options from the seeds: smeared keys
(ToyArch.smear_keys, see smeared_keys.py), Gaussian noise injection while training (TrainConfig.noise,
see noise.py) and the loss positions: `all` is the seeds' GPT-2-like model's multi-position loss
((y0, y1, y2) -> (y1, y2, y3), a loss term at every position, the default); `answer` scores only what
context determines (a text task's answer tokens, the induction stream's copied tokens).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from circuitbench.environment import torch_threads
from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.models.tokenizers import word_level_tokenizer
from circuitbench.models.toy import build_native_model, save_checkpoint
from circuitbench.prompts.generate import generate_prompts
from circuitbench.prompts.induction import InductionParams
from circuitbench.specs.catalog import expand_task_names, load_task
from circuitbench.specs.options import RunOptions, effective_spec
from circuitbench.specs.registries import GENERATORS
from circuitbench.training.config import TrainConfig
from circuitbench.training.noise import injected_noise
from circuitbench.training.zoo import induction_batch


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


def _text_examples(task: str, n_train: int) -> tuple[list[tuple[str, str]], set[str]]:
    """(train-split (prompt, answer) pairs, every word of every split) for one text task."""
    spec = load_task(task)
    words: set[str] = set()
    examples: list[tuple[str, str]] = []
    for split in ("train", "val", "test"):
        n = n_train if split == "train" else None
        spec_split = effective_spec(spec.model_copy(update={"n_prompts": "all"}), RunOptions(split=split, n_prompts=n))
        for p in generate_prompts(spec_split).prompts:
            for t in (p.text, p.answer or "", p.distractor or "", p.corrupted_text or ""):
                words.update(_words(t))
            if split == "train":
                examples.append((p.text, p.answer or ""))
    return examples, words


def text_rows(examples: list[tuple[str, str]], vocab: dict[str, int], bos: int, pad: int,
              n_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, width]: BOS + prompt + answer, right-padded; answer targets [n, width - 1]:
    True where the next-token target (target i = token i + 1) is an answer token)."""
    rows = [[bos] + [vocab[w] for w in _words(prompt + answer)] for prompt, answer in examples]
    if rows and max(map(len, rows)) > n_ctx:
        raise CircuitbenchError(f"train: prompts of {max(map(len, rows))} tokens exceed n_ctx={n_ctx}.")
    width = max(map(len, rows), default=1)
    data = torch.full((len(rows), width), pad, dtype=torch.long)
    answers = torch.zeros(len(rows), max(width - 1, 1), dtype=torch.bool)
    for i, ((prompt, _answer), row) in enumerate(zip(examples, rows)):
        # the answer is the row's last n tokens (counted on the joined text: it may glue onto the prompt)
        n_answer = len(row) - 1 - len(_words(prompt))
        data[i, : len(row)] = torch.tensor(row)
        answers[i, len(row) - 1 - n_answer : len(row) - 1] = True
    return data, answers


# periods of the number prior's sinusoids: small coprime ones single out a value (their product exceeds any
# number in the tasks), large ones give magnitude
NUMBER_PERIODS = (2, 3, 5, 7, 10, 11, 13, 30, 100, 300, 1000)


def seed_number_embeddings(model: torch.nn.Module, vocab: dict[str, int]) -> int:
    """Write cos/sin(2π·n/P) for P in NUMBER_PERIODS into the first 2·len(NUMBER_PERIODS) dimensions of
    the embedding and unembedding rows of every token that is an integer n, scaled to the rows' mean
    norm (TrainConfig.number_prior); returns how many tokens got them."""
    numbers = {tok: int(word) for word, tok in vocab.items() if word.isdigit()}
    if not numbers:
        return 0
    ids = torch.tensor(list(numbers))
    angles = 2 * math.pi * torch.tensor(list(numbers.values()), dtype=torch.float)[:, None] / torch.tensor(
        NUMBER_PERIODS, dtype=torch.float)
    features = torch.cat([angles.cos(), angles.sin()], dim=1)  # [n_numbers, 2 * n_periods], row norm sqrt(n_periods)
    with torch.no_grad():
        for weight in (model.tok_embed.weight, model.head.weight):  # [d_vocab, d_model] both
            scale = float(weight.norm(dim=1).mean()) / math.sqrt(len(NUMBER_PERIODS))
            weight[ids, : features.shape[1]] = features * scale
    return len(numbers)


def train(config: TrainConfig, out: Path,
          report: Callable[[int, float], None] = lambda step, loss: None) -> dict[str, object]:
    with torch_threads(config.threads):
        return _train(config, out, report)


@dataclass
class TrainingData:
    """What the training loop draws from: the text tasks' train rows and/or the induction stream."""

    tokenizer: PreTrainedTokenizerFast
    rows: torch.Tensor  # [n, width] BOS + prompt + answer, right-padded
    answer_targets: torch.Tensor  # [n, width - 1] True where the next-token target is an answer token
    row_weights: torch.Tensor | None  # [n] draw weights that make every task equally likely
    n_text_tasks: int
    induction: InductionParams | None  # the induction task's params (symbols, repeat lengths), if any
    stream_len: int
    symbol_ids: list[int]
    pool: list[int] | None  # the induction symbols, recorded so induction prompts on the model use them

    @property
    def has_text(self) -> bool:
        return len(self.rows) > 0

    def batch(self, step: int, gen: torch.Generator, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [batch, width], loss mask [batch, width - 1]) for one step."""
        answer_only = config.loss_positions == "answer"
        # deterministic interleaving: induction on `induction_share` of the steps (0.5: every even step)
        share = config.induction_share
        if self.induction is not None and (
                not self.has_text or math.floor(step * share) != math.floor((step - 1) * share)):
            max_len = min(self.induction.max_len, (self.stream_len - 1) // 2)
            batch, copied = induction_batch(gen, config.batch_size, len(self.symbol_ids), min(4, max_len), max_len,
                                            self.stream_len, self.tokenizer.bos_token_id, self.symbol_ids[0])
            return batch, copied if answer_only else torch.ones_like(copied)
        if self.n_text_tasks == 1:  # (the draw the shipped single-task toys were trained with)
            idx = torch.randint(0, len(self.rows), (config.batch_size,), generator=gen)
        else:  # every task equally often
            idx = torch.multinomial(self.row_weights, config.batch_size, replacement=True, generator=gen)
        pad = self.tokenizer.pad_token_id
        width = int((self.rows[idx] != pad).sum(dim=1).max())  # no all-padding columns (pad only ever trails)
        batch = self.rows[idx][:, :width]
        return batch, self.answer_targets[idx][:, : width - 1] if answer_only else batch[:, 1:] != pad


def training_data(config: TrainConfig) -> TrainingData:
    """The word vocabulary (every split's words, so test prompts tokenize too) and the train rows."""
    text_tasks, induction = [], None
    for task in expand_task_names(config.tasks):
        spec = load_task(task)
        if GENERATORS.get(spec.generator.name).answers(spec.generator):
            text_tasks.append(task)
        elif spec.generator.name == "induction":
            induction = spec.generator  # its symbol count and repeat lengths shape the stream
        else:
            raise CircuitbenchError(f"train: task '{task}' has no training data recipe.")
    examples: list[tuple[str, str]] = []
    words: set[str] = set()
    row_task: list[int] = []
    for i, task in enumerate(text_tasks):
        e, w = _text_examples(task, config.n_train)
        examples += e
        words |= w
        row_task += [i] * len(e)
    unknown = sorted(set(config.task_weights) - set(text_tasks))
    if unknown:
        raise CircuitbenchError(f"train: --task-weights names {', '.join(unknown)}, not among the text tasks trained "
                                f"on ({', '.join(text_tasks) or 'none'}). Name tasks given to --task.")
    # every task equally often (times its weight), however many distinct prompts its train split holds
    row_weights = None
    if row_task:
        task_sizes = torch.bincount(torch.tensor(row_task, dtype=torch.long), minlength=len(text_tasks))
        # float32 as before weights existed: unweighted draws stay those the shipped toys were trained with
        task_share = torch.tensor([config.task_weights.get(t, 1.0) for t in text_tasks], dtype=torch.float)
        row_weights = (task_share / task_sizes)[torch.tensor(row_task)].double()
    symbols = [f"t{i}" for i in range(induction.n_symbols)] if induction else []
    tokenizer = word_level_tokenizer(sorted(words | set(symbols)))
    vocab = tokenizer.get_vocab()
    rows, answer_targets = text_rows(examples, vocab, tokenizer.bos_token_id, tokenizer.pad_token_id,
                                     config.arch.n_ctx)
    return TrainingData(
        tokenizer=tokenizer, rows=rows, answer_targets=answer_targets, row_weights=row_weights,
        n_text_tasks=len(text_tasks), induction=induction,
        # the stream: one copied segment per row, room for a gap, within the context
        stream_len=min(config.arch.n_ctx, 2 * induction.max_len + 12) if induction else 0,
        symbol_ids=sorted(vocab[s] for s in symbols),
        # induction prompts on this model draw from the stream's symbols, not from its text words
        pool=[vocab[s] for s in symbols] if symbols and len(rows) > 0 else None,
    )


def _train(config: TrainConfig, out: Path, report: Callable[[int, float], None]) -> dict[str, object]:
    data = training_data(config)
    cfg = config.arch.bridge_config(len(data.tokenizer))
    variant = config.arch.variant()
    model = build_native_model(cfg, config.seed, variant)
    if config.number_prior:
        seed_number_embeddings(model, data.tokenizer.get_vocab())
    gen = torch.Generator().manual_seed(config.seed)
    # noise draws from its own generator: switching noise on leaves the data batches as they were
    noise_gen = torch.Generator().manual_seed(config.seed + 10_000)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    saves = set(checkpoint_steps(config.steps, config.checkpoints))
    losses: list[float] = []
    t0 = time.perf_counter()

    def save(path: Path, step: int) -> None:
        record = {"trainer": "circuitbench train", "step": step, **config.model_dump(mode="json")}
        save_checkpoint(path, model, cfg, data.tokenizer, record, variant, data.pool)

    with injected_noise(model, config.noise, noise_gen):
        model.train()
        for step in range(1, config.steps + 1):
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            batch, targets_mask = data.batch(step, gen, config)
            logits = model(batch)
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                  reduction="none")
            loss = (nll * targets_mask.reshape(-1)).sum() / targets_mask.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            report(step, losses[-1])
            if step in saves:
                model.eval()
                save(out / "checkpoints" / f"step_{step:06d}", step)
                model.train()
    model.eval()
    save(out, config.steps)  # the final model also sits at OUT itself, so `--model OUT` is the trained model
    summary = {"final_loss": losses[-1], "train_seconds": round(time.perf_counter() - t0, 1), "steps": config.steps,
               "checkpoints": sorted(saves)}
    write_atomic(out / "training_log.json", json.dumps({"config": config.model_dump(mode="json"), "loss": losses,
                                                        **summary}) + "\n")
    return summary
