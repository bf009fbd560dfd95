"""Planted-circuit models: known answers where precision means something.

A compiled tracr model has all-zero weights outside its circuit, so every method ranks the rest
last and precision is 1 by construction. A *planted* model is the same compiled program (weights
frozen: its circuit is the known answer, circuit.json) with **distractors** in every head slot and
MLP the program leaves empty (the model widened to more heads, and a block added where no MLP slot
is free). Distractors are trained, with the program's weights frozen, to be

- **active**: each reads the residual stream and writes an output that varies from prompt to
  prompt (output RMS across prompts at least ACTIVITY_TARGET, about a compiled component's), and
  encodes something about the input, checked by a linear probe trained with it: heads attend as
  detectors look for (`previous` token, the `first` element, `self`) and carry the attended token;
  MLPs carry whether the token `repeat`s the previous one (reading a previous-token distractor);
- **causally irrelevant**: trained by projected gradient descent, every step followed by removing
  from what each distractor writes its component along the directions that compiled components
  after it read (queries, keys, values, MLP inputs, the output tokens' unembedding; and the pad flag
  every head's pad mask reads): the program's computation is untouched exactly. Then each gets a
  small **planted leak** — a seeded random write inside that read subspace, scaled (by bisection on
  random inputs) so that ablating it moves an output logit by about LEAK_TARGET — because unused
  components of a trained model have small real effects, not exactly none: an effect method must
  then rank them below what matters, not tie them at 0 with it. (Soft losses instead — logits
  matched under SIIT-style interchange of distractor outputs — left single distractors moving the
  logit difference by 30-180 % of the full effect after 1,000 steps: tracr's query and MLP-input
  gains of 100 amplify any leak.)

Everything is then measured on the task prompts and recorded in planted.json (checked by the build
and by tests/training/test_planted.py): per distractor its activity (output RMS, share of prompts
whose counterfactual changes its output, probe accuracy, attention on its target) and its effect
on the task's logit difference when it alone, and all of them together, are zero-, mean- and
resample-ablated, relative to the full clean - counterfactual effect; the build fails when any
effect reaches BOUND or any distractor is inactive.

    circuitbench train-zoo planted-reverse --out DIR     # PLANTED[name]: base, layout, roles

Training is seeded (one torch.Generator) and runs on one thread in seconds to a minute; the
same seed rebuilds the same weights."""
from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.errors import CircuitbenchError, did_you_mean
from circuitbench.files import write_atomic
from circuitbench.models.planted import PlantedNetwork, read_matrices, used_slots, widen
from circuitbench.models.tl_format import (
    CIRCUIT_FILE,
    TRACR_FILE,
    load_tl_tokenizer,
    read_state_dict,
    save_tl_checkpoint,
    weights_file,
)
from circuitbench.models.toy import ZOO_DIR
from circuitbench.output_paths import replace_dir_staged

Role = Literal["previous", "first", "self", "repeat"]
HEAD_ROLES = ("previous", "first", "self")
MLP_ROLES = ("repeat",)
PLANTED_FILE = "planted.json"
PROMPTS_FILE = "prompts.jsonl"
LOG_FILE = "training_log.json"  # also what makes the folder a checkpoint folder for `train-zoo` (output_paths)
PLANTED_FILES = frozenset({"cfg.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                           "special_tokens_map.json", CIRCUIT_FILE, PLANTED_FILE, PROMPTS_FILE, LOG_FILE})

ACTIVITY_TARGET = 1.0  # output RMS across prompts a distractor is trained to reach (a compiled one-hot write is 1)
ACTIVE_MIN = 0.5  # ... and must reach on the task prompts
CHANGED_MIN = 0.5  # share of task prompts whose counterfactual must change a distractor's output
CHANGE_TOL = 1e-2  # |output difference| above which an output counts as changed
BOUND = 0.02  # a distractor's |effect| (alone or all together), relative to the full effect, must stay below
BATCH = 64
LR = 1e-2
LEAK_TARGET = 0.003  # the largest output-logit change each distractor's planted leak may cause alone


@dataclass(frozen=True)
class PlantedRecipe:
    """How a planted model is built: the tracr zoo model it starts from, its widened layout and the
    role of every distractor (every slot the program leaves empty must have one)."""

    base: str
    n_layers: int
    n_heads: int
    roles: Mapping[str, Role]
    description: str
    steps: int = 1500
    n_prompts: int = 128
    n_params: int = 0  # the built model's size (threads are chosen by it)

    def command(self, name: str) -> str:
        return f"circuitbench train-zoo {name} --out DIR"


PLANTED: dict[str, PlantedRecipe] = {
    "planted-reverse": PlantedRecipe(
        "tracr-reverse", 4, 2,
        {"a0.h1": "previous", "a1.h0": "first", "a1.h1": "self", "a2.h0": "previous", "a2.h1": "first",
         "a3.h1": "self", "m3": "repeat"},
        "tracr reverse + 6 distractor heads and 1 distractor MLP (its length head is invisible to a "
        "same-length counterfactual)", n_params=29851),
    "planted-hist": PlantedRecipe(
        "tracr-hist", 2, 2, {"a0.h1": "previous", "a1.h0": "first", "a1.h1": "self", "m1": "repeat"},
        "tracr hist + 3 distractor heads and 1 distractor MLP in an added block (its head feeds a "
        "step-function MLP: zero gradient)", n_params=3845),
    "planted-detect-abc": PlantedRecipe(
        "tracr-detect-abc", 4, 2,
        {"a0.h0": "previous", "a0.h1": "self", "a2.h0": "previous", "a2.h1": "first", "a3.h0": "self",
         "a3.h1": "first", "m3": "repeat"},
        "tracr detect_pattern(abc) + 6 distractor heads and 1 distractor MLP in an added block (a "
        "reference head attends to the previous token, as two distractors do)", n_params=8574),
}


def recipe_of(name: str) -> PlantedRecipe:
    if name not in PLANTED:
        raise CircuitbenchError(f"Unknown planted model '{name}'.{did_you_mean(name, PLANTED)} Known: "
                                f"{', '.join(PLANTED)}.")
    return PLANTED[name]


# --- the base model and its tokens ---------------------------------------------------------------

@dataclass(frozen=True)
class Base:
    """The tracr checkpoint a planted model starts from."""

    path: Path
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    record: dict[str, Any]  # its tracr.json
    tokenizer: Any
    input_ids: list[int]
    output_ids: list[int]
    pad_dim: int

    @property
    def max_seq_len(self) -> int:
        return int(self.record["max_seq_len"])

    def word_ids(self, text: str) -> list[int]:
        return [int(self.tokenizer.bos_token_id)] + [int(self.tokenizer.convert_tokens_to_ids(w))
                                                     for w in text.split()]


def load_base(name: str, root: Path = ZOO_DIR) -> Base:
    path = root / name
    record = json.loads((path / TRACR_FILE).read_text())
    config = json.loads((path / "cfg.json").read_text())
    if config.get("attention_dir") == "causal":
        raise CircuitbenchError(f"{path}: a planted model starts from a bidirectional tracr import (its heads carry "
                                "the pad mask on their last dimension).")
    tokenizer = load_tl_tokenizer(path)
    ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in record["input_tokens"]]
    out = [int(tokenizer.convert_tokens_to_ids(t)) for t in record["output_tokens"]]
    return Base(path=path, config=config, state=read_state_dict(weights_file(path)), record=record,
                tokenizer=tokenizer, input_ids=ids, output_ids=out,
                pad_dim=record["residual_labels"].index(f"tokens:{record['compiler_pad']}"))


# --- batches and what each role must carry -------------------------------------------------------

def random_batch(gen: torch.Generator, base: Base, batch: int,
                 lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [batch, max_seq_len + 1]: BOS, random input values, right-padded; lengths [batch]:
    elements per row, 1..max_seq_len, drawn unless given)."""
    n = base.max_seq_len
    if lengths is None:
        lengths = torch.randint(1, n + 1, (batch,), generator=gen)
    values = torch.tensor(base.input_ids)[torch.randint(0, len(base.input_ids), (batch, n + 1), generator=gen)]
    values[:, 0] = int(base.tokenizer.bos_token_id)
    real = torch.arange(n + 1)[None] <= lengths[:, None]
    return torch.where(real, values, int(base.tokenizer.pad_token_id)), lengths


def real_positions(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[batch, pos] True at BOS and the elements."""
    return torch.arange(tokens.shape[1])[None] <= lengths[:, None]


def role_targets(role: Role, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor]:
    """(key position [batch, pos] the role attends to, probe class [batch, pos], mask [batch, pos]
    of the positions that count: the elements, 1..length)."""
    b, p = tokens.shape
    pos = torch.arange(p)[None].expand(b, p)
    mask = (pos >= 1) & (pos <= lengths[:, None])
    if role == "previous":
        key = (pos - 1).clamp(min=0)
    elif role == "first":
        key = torch.ones_like(pos)
    else:  # self, repeat
        key = pos
    attended = tokens.gather(1, key)
    if role == "repeat":
        attended = (tokens == tokens.gather(1, (pos - 1).clamp(min=0))).long() & mask.long()
    return key, attended, mask


def position_means(out: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """[pos, d] mean over the rows long enough to have each position (zeros where none is)."""
    weight = real.float()
    return (out * weight[..., None]).sum(0) / weight.sum(0).clamp(min=1)[:, None]


def output_rms(out: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Root mean square distance of the output from its position-wise mean, over real positions of
    rows (past BOS): how much a component's output varies from prompt to prompt."""
    mask = real.clone()
    mask[:, 0] = False
    diff = out - position_means(out, real)[None]
    sq = (diff ** 2).sum(-1)
    return ((sq * mask).sum() / mask.sum().clamp(min=1)).sqrt()


# --- training ------------------------------------------------------------------------------------

@dataclass
class Probes:
    """A linear read-out per distractor (trained with it, then thrown away)."""

    weights: dict[str, torch.nn.Linear] = field(default_factory=dict)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for lin in self.weights.values() for p in lin.parameters()]


def _orthonormal(columns: torch.Tensor) -> torch.Tensor:
    """[d, r] an orthonormal basis of the column space (numerical rank)."""
    u, s, _ = torch.linalg.svd(columns.double(), full_matrices=False)
    rank = int((s > s.max() * 1e-6).sum()) if len(s) else 0
    return u[:, :rank].float()


def _project_out(net: PlantedNetwork, basis: Mapping[str, torch.Tensor]) -> None:
    """Remove from every distractor's writes their component along the directions compiled
    components after it read (`basis`: orthonormal [d_model, r] per distractor)."""
    with torch.no_grad():
        for name, q in basis.items():
            for part in net.write_parameters(name):
                part -= (part @ q) @ q.T


def train_distractors(net: PlantedNetwork, base: Base, roles: Mapping[str, Role], steps: int,
                      gen: torch.Generator, report: Callable[[int, float], None]) -> dict[str, Any]:
    """Train the distractors' weights (the rest frozen) by projected gradient descent: after every
    step, what each writes is projected off the directions compiled components after it read, so the
    program's computation is exactly untouched while the distractors learn their roles. Returns the
    training log and the probes' accuracy."""
    basis = read_bases(net, base, roles)
    _project_out(net, basis)
    d_vocab = int(net.config["d_vocab"])
    probes = Probes({name: torch.nn.Linear(net.d_model, 2 if role == "repeat" else d_vocab)
                     for name, role in roles.items()})
    for lin in probes.weights.values():  # seeded like everything else
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) / net.d_model ** 0.5)
            lin.bias.zero_()
    opt = torch.optim.Adam([*net.weights.values(), *probes.parameters()], lr=LR)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - 0.9 * i / max(1, steps))
    log: list[dict[str, float]] = []
    for step in range(1, steps + 1):
        tokens, lengths = random_batch(gen, base, BATCH)
        real = real_positions(tokens, lengths)
        _, outs, patterns = net(tokens)
        activity = probe = attention = torch.zeros(())
        for n, role in roles.items():
            key, cls, mask = role_targets(role, tokens, lengths)
            rms = output_rms(outs[n], real)  # kept between the target and twice it
            activity = activity + F.relu(ACTIVITY_TARGET - rms) ** 2 + F.relu(rms - 2 * ACTIVITY_TARGET) ** 2
            probe = probe + F.cross_entropy(probes.weights[n](outs[n][mask]), cls[mask])
            if n in patterns:
                on_key = patterns[n].gather(2, key[..., None])[..., 0]
                attention = attention - (on_key[mask] + 1e-9).log().mean()  # (a clamp would stop the gradient)
        loss = activity + probe + attention
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        _project_out(net, basis)
        report(step, float(loss.detach()))
        if step % 250 == 0 or step == steps:
            log.append({"step": step, "loss": float(loss.detach()), "activity": float(activity.detach()),
                        "probe": float(probe.detach()), "attention": float(attention.detach())})
    return {"log": log, "probe_accuracy": _probe_accuracy(net, base, roles, probes, gen)}


def read_bases(net: PlantedNetwork, base: Base, names: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Per distractor, an orthonormal basis [d_model, r] of the directions compiled components
    after it read (and the unembedding's output tokens)."""
    reads = read_matrices(net.frozen, net.n_layers, net.n_heads,
                          used_slots(net.frozen, net.n_layers, net.n_heads), base.output_ids)
    pad = torch.zeros(net.d_model, 1)
    pad[base.pad_dim] = 1.0  # every head's pad mask reads it: a write there would mask or unmask real positions
    return {name: _orthonormal(torch.cat([reads[name], pad], 1)) for name in names}


def largest_change(net: PlantedNetwork, tokens: torch.Tensor, lengths: torch.Tensor, names: list[str],
                   outputs: torch.Tensor) -> float:
    """max |change of an output-token logit| at any real position when `names` are zero-,
    mean- or resample-ablated (partner: the batch rolled by one row, lengths permitting)."""
    real = real_positions(tokens, lengths)
    with torch.no_grad():
        logits, outs, _ = net(tokens)
        same = (lengths.roll(1) == lengths)[:, None, None]
        worst = 0.0
        for kind in ("zero", "mean", "resample"):
            replace = {}
            for n in names:
                if kind == "zero":
                    replace[n] = torch.zeros_like(outs[n])
                elif kind == "mean":
                    replace[n] = position_means(outs[n], real)[None].expand_as(outs[n])
                else:
                    replace[n] = torch.where(same, outs[n].roll(1, 0), outs[n])
            change = (net(tokens, replace)[0] - logits)[..., outputs].abs() * real[..., None]
            worst = max(worst, float(change.max()))
    return worst


def plant_leaks(net: PlantedNetwork, base: Base, roles: Mapping[str, Role], gen: torch.Generator,
                target: float) -> dict[str, float]:
    """Give every distractor a small write along directions compiled components read (a random
    direction of that subspace, seeded), scaled so that ablating it alone moves an output logit by
    at most about `target` on random inputs: irrelevant within the bound, as a trained model's
    unused components are, but not exactly zero. Returns each leak's Frobenius norm."""
    basis = read_bases(net, base, roles)
    pad = torch.zeros(net.d_model)
    pad[base.pad_dim] = 1.0
    tokens, lengths = random_batch(gen, base, 512)
    outputs = torch.tensor(base.output_ids)
    norms = {}
    for name in roles:
        parts = net.write_parameters(name)
        directions = [torch.randn(p.shape, generator=gen) @ basis[name] @ basis[name].T for p in parts]
        directions = [d - (d @ pad)[..., None] * pad for d in directions]  # never along the pad flag
        total = sum(float((d ** 2).sum()) for d in directions) ** 0.5
        directions = [d / total for d in directions]
        kept = [p.detach().clone() for p in parts]
        low, high = 0.0, 1.0

        def set_scale(scale: float) -> None:
            with torch.no_grad():
                for p, k, d in zip(parts, kept, directions):
                    p.copy_(k + scale * d)

        for _ in range(40):  # grow until too large, then bisect (the effect grows with the scale)
            set_scale(high)
            if largest_change(net, tokens, lengths, [name], outputs) > target:
                break
            low, high = high, high * 2
        for _ in range(30):
            mid = (low + high) / 2
            set_scale(mid)
            low, high = (mid, high) if largest_change(net, tokens, lengths, [name], outputs) <= target else (low, mid)
        set_scale(low)
        norms[name] = low
    return norms


def _probe_accuracy(net: PlantedNetwork, base: Base, roles: Mapping[str, Role], probes: Probes,
                    gen: torch.Generator) -> dict[str, float]:
    """Each probe's accuracy on fresh random inputs."""
    tokens, lengths = random_batch(gen, base, 512)
    with torch.no_grad():
        outs = net(tokens)[1]
        accuracy = {}
        for n, role in roles.items():
            _, cls, mask = role_targets(role, tokens, lengths)
            accuracy[n] = float((probes.weights[n](outs[n][mask]).argmax(-1) == cls[mask]).float().mean())
    return accuracy


# --- the record ----------------------------------------------------------------------------------

class AblationEffect(BaseModel):
    """What ablating a component (or a set) does to the task's logit difference."""

    model_config = ConfigDict(extra="forbid")
    mean: float = Field(description="|mean over prompts of the change of logit_diff| / the full effect")
    max: float = Field(description="largest |change of logit_diff| on one prompt / the full effect")
    answers_changed: int = Field(description="prompts whose top output token changes")
    n_prompts: int = Field(description="prompts measured (resample: those with a partner of their length)")


class DistractorRecord(BaseModel):
    """One distractor: what it does and that it does not matter."""

    model_config = ConfigDict(extra="forbid")
    role: str = Field(description="what it was trained to carry (previous, first, self: the token a head attends to "
                                  "and copies; repeat: an MLP flagging a token equal to the previous one)")
    output_rms: float = Field(description="RMS distance of its output from the position-wise mean over the clean "
                                          "task prompts (compiled components' one-hot writes: about 1)")
    changed_share: float = Field(description="share of task prompts whose counterfactual changes its output by more "
                                             f"than {CHANGE_TOL}")
    probe_accuracy: float = Field(description="accuracy of a linear probe reading its role's target from its output "
                                              "(random inputs)")
    attention_on_target: float | None = Field(description="heads: mean attention on the key its role names")
    effect: dict[str, AblationEffect] = Field(description="ablated alone: by ablation (zero, mean, resample)")


class PlantedRecord(BaseModel):
    """planted.json: how the model was built and what was measured on its task prompts."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="zoo name")
    base: str = Field(description="the tracr zoo model whose weights (the circuit) are kept frozen")
    program: str = Field(description="the tracr program")
    command: str = Field(description="the command that rebuilds it")
    seed: int = Field(description="seed of the distractors' initialisation and training data")
    steps: int = Field(description="training steps")
    train_seconds: float = Field(description="training time (one thread)")
    base_weights_sha256: str = Field(description="sha256 of the base checkpoint's weights file")
    reference: list[str] = Field(description="the known circuit's nodes (circuit.json)")
    distractors: dict[str, DistractorRecord] = Field(description="every other head and MLP")
    together: dict[str, AblationEffect] = Field(description="every distractor ablated at once, by ablation")
    reference_output_rms: dict[str, float] = Field(description="the compiled components' output RMS, for scale")
    full_effect: float = Field(description="mean logit_diff clean - counterfactual on the task prompts")
    accuracy: float = Field(description="task accuracy of the planted model (the program's answer at END)")
    bound: float = Field(description="every effect above (alone and together) is below this")
    max_abs_diff_bridge: float = Field(description="max |logits| difference between the training forward and the "
                                                   "checkpoint loaded through circuitbench")
    n_prompts: int = Field(description="task prompts measured (prompts.jsonl)")
    leak_target: float = Field(description="each distractor's planted write along directions the program reads is "
                                           "scaled so that ablating it alone moves an output logit by at most this "
                                           "(random inputs): irrelevant within the bound, not exactly zero")


@dataclass(frozen=True)
class Encoded:
    """Task prompts as token rows for the plain forward."""

    tokens: torch.Tensor  # [n, pos] right-padded
    corrupted: torch.Tensor
    lengths: torch.Tensor  # elements per row
    answer: torch.Tensor
    distractor: torch.Tensor


def encode_records(base: Base, records: list[dict[str, str]]) -> Encoded:
    n_pos = base.max_seq_len + 1
    pad = int(base.tokenizer.pad_token_id)

    def rows(texts: list[str]) -> torch.Tensor:
        ids = [base.word_ids(t) for t in texts]
        return torch.tensor([r + [pad] * (n_pos - len(r)) for r in ids])

    def word(text: str) -> int:
        return int(base.tokenizer.convert_tokens_to_ids(text.strip()))

    return Encoded(tokens=rows([r["prompt"] for r in records]), corrupted=rows([r["corrupted"] for r in records]),
                   lengths=torch.tensor([len(r["prompt"].split()) for r in records]),
                   answer=torch.tensor([word(r["answer"]) for r in records]),
                   distractor=torch.tensor([word(r["distractor"]) for r in records]))


def logit_diff(logits: torch.Tensor, data: Encoded) -> torch.Tensor:
    rows = torch.arange(len(data.lengths))
    end = logits[rows, data.lengths]
    return end[rows, data.answer] - end[rows, data.distractor]


def resample_partners(lengths: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Per prompt, another prompt of its length (a seeded cycle within each length; -1: none)."""
    rng = random.Random(seed)
    partner = torch.full((len(lengths),), -1)
    for length in sorted(set(lengths.tolist())):
        group = [i for i, n in enumerate(lengths.tolist()) if n == length]
        rng.shuffle(group)
        if len(group) > 1:
            for i, j in zip(group, group[1:] + group[:1]):
                partner[i] = j
    return partner


def measure(net: PlantedNetwork, base: Base, data: Encoded, roles: Mapping[str, Role],
            reference: list[str]) -> dict[str, Any]:
    """Activity and irrelevance of every distractor on the task prompts (plain forwards)."""
    real = real_positions(data.tokens, data.lengths)
    outputs = torch.tensor(base.output_ids)
    partners = resample_partners(data.lengths)
    has = partners >= 0
    with torch.no_grad():
        logits, outs, patterns = net(data.tokens)
        corr_outs = net(data.corrupted)[1]
        clean = logit_diff(logits, data)
        full = float(clean.mean() - logit_diff(net(data.corrupted)[0], data).mean())
        top = logits[torch.arange(len(clean)), data.lengths][:, outputs].argmax(-1)

        def effect(replace: dict[str, torch.Tensor], rows: torch.Tensor) -> AblationEffect:
            ablated = net(data.tokens, replace)[0]
            change = (logit_diff(ablated, data) - clean)[rows]
            moved = ablated[torch.arange(len(clean)), data.lengths][:, outputs].argmax(-1) != top
            return AblationEffect(mean=abs(float(change.mean())) / abs(full), max=float(change.abs().max()) / abs(full),
                                  answers_changed=int(moved[rows].sum()), n_prompts=int(rows.sum()))

        every = torch.ones(len(clean), dtype=torch.bool)

        def replacements(kind: str, names: list[str]) -> dict[str, torch.Tensor]:
            if kind == "zero":
                return {n: torch.zeros_like(outs[n]) for n in names}
            if kind == "mean":
                return {n: position_means(outs[n], real)[None].expand_as(outs[n]) for n in names}
            return {n: torch.where(has[:, None, None], outs[n][partners.clamp(min=0)], outs[n]) for n in names}

        kinds = ("zero", "mean", "resample")
        rows = {"zero": every, "mean": every, "resample": has}
        distractors = {}
        for n, role in roles.items():
            key, _, mask = role_targets(role, data.tokens, data.lengths)
            diff = (outs[n] - corr_outs[n]).norm(dim=-1) * real
            distractors[n] = {
                "role": role, "output_rms": float(output_rms(outs[n], real)),
                "changed_share": float((diff.amax(1) > CHANGE_TOL).float().mean()),
                "attention_on_target": float(patterns[n].gather(2, key[..., None])[..., 0][mask].mean())
                if n in patterns else None,
                "effect": {k: effect(replacements(k, [n]), rows[k]) for k in kinds}}
        together = {k: effect(replacements(k, list(roles)), rows[k]) for k in kinds}
        accuracy = float((logits[torch.arange(len(clean)), data.lengths].argmax(-1) == data.answer).float().mean())
    return {"distractors": distractors, "together": together, "full_effect": full, "accuracy": accuracy,
            "reference_output_rms": reference_rms(net, data, reference)}


def reference_rms(net: PlantedNetwork, data: Encoded, reference: list[str]) -> dict[str, float]:
    """The compiled components' output RMS across prompts: the scale a distractor's is compared with."""
    real = real_positions(data.tokens, data.lengths)
    with torch.no_grad():
        outs = net(data.tokens)[1]
    return {name: float(output_rms(outs[name], real)) for name in reference}


def check_record(record: PlantedRecord) -> list[str]:
    """What makes a planted model unusable (empty: it is fine)."""
    problems = []
    for n, d in record.distractors.items():
        if d.output_rms < ACTIVE_MIN:
            problems.append(f"{n} is not active (output RMS {d.output_rms:.3f} < {ACTIVE_MIN})")
        if d.changed_share < CHANGED_MIN:
            problems.append(f"{n} rarely changes under the counterfactual ({d.changed_share:.2f} < {CHANGED_MIN})")
        for kind, e in d.effect.items():
            if e.max >= record.bound or e.answers_changed:
                problems.append(f"{n} matters under {kind} ablation (max effect {e.max:.4f}, "
                                f"{e.answers_changed} answers changed)")
    for kind, e in record.together.items():
        if e.max >= record.bound or e.answers_changed:
            problems.append(f"all distractors together matter under {kind} ablation (max effect {e.max:.4f})")
    if record.accuracy < 1.0:
        problems.append(f"task accuracy {record.accuracy:.3f} < 1")
    return problems


# --- the build -----------------------------------------------------------------------------------

def not_a_planted_model(folder: Path) -> str | None:
    """Why `folder` is not a planted model this module wrote (None when it is)."""
    if not (folder / PLANTED_FILE).is_file():
        return f"no {PLANTED_FILE}"
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in PLANTED_FILES or not p.is_file())
    return f"it also holds {', '.join(foreign[:4])}" if foreign else None


def task_records(base: Base, model: Any, n: int) -> list[dict[str, str]]:
    """The END-position task prompts, as import-tracr writes them (tracr_import.task_prompts:
    random lengths, the RASP program's answer, which `model` must also predict)."""
    from circuitbench.models.tracr_import import ProgramArgs, canonical_labels, resolve_program, task_prompts

    vocab = tuple(base.record["vocab"])
    sop = resolve_program(base.record["program"], ProgramArgs(vocab=vocab, max_seq_len=base.max_seq_len))
    canonical_labels(sop)
    return task_prompts(sop, model, _TokenizerOnly(base.tokenizer), vocab, base.max_seq_len, n)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _TokenizerOnly:
    """What task_prompts reads of a tracr conversion: its tokenizer."""

    tokenizer: Any


def build_planted(name: str, out: Path, steps: int | None = None, seed: int = 0,
                  report: Callable[[int, float], None] = lambda step, loss: None, *, base_root: Path = ZOO_DIR,
                  check: bool = True) -> PlantedRecord:
    """Build planted model `name` (PLANTED) into `out`: widen its tracr base, train the
    distractors (seeded), save the TL-format checkpoint with circuit.json (the base's), the task
    prompts and planted.json, measured. With `check`, refuse (nothing written) when a distractor is
    inactive or matters, or the forward differs from the loaded checkpoint's."""
    from circuitbench.models.loading import load_model

    recipe = recipe_of(name)
    base = load_base(recipe.base, base_root)
    state, config = widen(base.state, base.config, recipe.n_layers, recipe.n_heads)
    compiled = used_slots(state, recipe.n_layers, recipe.n_heads)
    empty = {f"a{l}.h{h}" for l in range(recipe.n_layers) for h in range(recipe.n_heads)} | {
        f"m{l}" for l in range(recipe.n_layers)}
    empty -= compiled
    if set(recipe.roles) != empty:
        raise CircuitbenchError(f"planted recipe {name}: roles name {sorted(recipe.roles)}, but the empty slots are "
                                f"{sorted(empty)}: give every empty slot a role.")
    bad = [n for n, r in recipe.roles.items() if r not in (MLP_ROLES if n.startswith("m") else HEAD_ROLES)]
    if bad:
        raise CircuitbenchError(f"planted recipe {name}: {bad}: heads take {HEAD_ROLES}, MLPs {MLP_ROLES}.")
    circuit = json.loads((base.path / CIRCUIT_FILE).read_text())
    gen = torch.Generator().manual_seed(seed)
    net = PlantedNetwork(state, {**config, "model_name": f"planted:{base.record['program']}"}, list(recipe.roles),
                         base.pad_dim, gen)
    total = steps or recipe.steps
    t0 = time.perf_counter()
    trained = train_distractors(net, base, recipe.roles, total, gen, report)
    plant_leaks(net, base, recipe.roles, gen, LEAK_TARGET)
    seconds = round(time.perf_counter() - t0, 1)
    tl_state = net.tl_state()
    tl_config = dict(net.config)

    def write(staging: Path) -> PlantedRecord:
        save_tl_checkpoint(staging, tl_config, tl_state, base.tokenizer,
                           {CIRCUIT_FILE: {**circuit, "source": "planted", "base": recipe.base,
                                           "n_layers": recipe.n_layers, "n_heads": recipe.n_heads}})
        model = load_model(str(staging), device="cpu")
        records = task_records(base, model, recipe.n_prompts)
        data = encode_records(base, records)
        with torch.no_grad():
            ours = net(torch.cat([data.tokens, data.corrupted]))[0]
        theirs = model.run(torch.cat([data.tokens, data.corrupted]))
        out_cols = torch.tensor(base.output_ids)
        bridge_diff = float((ours[..., out_cols] - theirs[..., out_cols].float()).abs().max())
        measured = measure(net, base, data, recipe.roles, circuit["nodes"])
        record = PlantedRecord(
            name=name, base=recipe.base, program=base.record["program"], command=recipe.command(name), seed=seed,
            steps=total, train_seconds=seconds,
            base_weights_sha256=hashlib.sha256(weights_file(base.path).read_bytes()).hexdigest(),
            reference=circuit["nodes"], bound=BOUND, max_abs_diff_bridge=bridge_diff, n_prompts=len(records),
            distractors={n: DistractorRecord(**m, probe_accuracy=trained["probe_accuracy"][n])
                         for n, m in measured["distractors"].items()},
            together=measured["together"], reference_output_rms=measured["reference_output_rms"],
            full_effect=measured["full_effect"], accuracy=measured["accuracy"], leak_target=LEAK_TARGET)
        problems = check_record(record) + ([f"the forward differs from the loaded checkpoint's by {bridge_diff:.2g}"]
                                           if bridge_diff > 1e-4 else [])
        if check and problems:
            raise CircuitbenchError(f"planted model {name} (seed {seed}, {total} steps) failed its check: "
                                    + "; ".join(problems) + ". Nothing was written.")
        # every prompt is a test prompt: nothing here was trained on the task's prompts
        write_atomic(staging / PROMPTS_FILE, "".join(json.dumps({**r, "split": "test"}) + "\n" for r in records))
        write_atomic(staging / PLANTED_FILE, record.model_dump_json(indent=2) + "\n")
        write_atomic(staging / LOG_FILE, json.dumps(trained["log"], indent=1) + "\n")
        return record

    return replace_dir_staged(out, write, not_a_planted_model, "--out", force=True, what="a planted model")


def zoo_trainer(name: str) -> Callable[[Path, Any, Callable[[int, float], None]], dict[str, float]]:
    """`train-zoo`'s recipe function for planted model `name` (training/zoo.py RECIPES): builds it
    with the settings' steps and seed; returns the figures the command prints."""
    def train(out: Path, settings: Any, report: Callable[[int, float], None]) -> dict[str, float]:
        record = build_planted(name, out, settings.steps, settings.seed, report)
        effects = [e.max for d in record.distractors.values() for e in d.effect.values()]
        return {"largest_distractor_effect": max(effects),
                "smallest_distractor_rms": min(d.output_rms for d in record.distractors.values()),
                "accuracy": record.accuracy}
    return train
