"""`circuitbench validate`: a task's prompts rendered, and what a tokenizer would drop, without
loading any weights — a library call (cb.validate_task) the CLI prints."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from circuitbench.errors import CircuitbenchError
from circuitbench.prompts.base import PromptSet
from circuitbench.prompts.generate import generate_prompts, shortfall
from circuitbench.specs.catalog import load_task
from circuitbench.specs.options import TaskOverrides, effective_spec
from circuitbench.specs.task import TaskSpec

if TYPE_CHECKING:
    from circuitbench.prompts.tokenization import DropReport


@dataclass(frozen=True)
class TaskValidation:
    """A task's prompts as it would run, with a note when the split holds fewer than asked, and
    (given a model or tokenizer) how many would be kept and why the others would be dropped."""

    spec: TaskSpec
    prompts: PromptSet
    shortfall: str | None
    tokenizer: str | None = None  # where the vocabulary came from
    kept: int | None = None
    drops: "DropReport | None" = None


def validate_task(task: str | TaskSpec, *, model: str | None = None, tokenizer: str | None = None,
                  n_prompts: int | None = None, include_paths: tuple[str, ...] = ()) -> TaskValidation:
    """Render `task` (a name, YAML path or TaskSpec) with up to `n_prompts` prompts; with `model` (a
    registry name, HF id or directory: its vocabulary only) or `tokenizer` (a tokenizer directory),
    encode them and count what would be dropped."""
    if model is not None and tokenizer is not None:
        raise CircuitbenchError("--model and --tokenizer both give the vocabulary: pass one.")
    if n_prompts is not None and n_prompts < 1:
        raise CircuitbenchError(f"--n-prompts {n_prompts}: give at least 1.")
    spec = task if isinstance(task, TaskSpec) else load_task(task, include_paths)
    spec = effective_spec(spec, TaskOverrides(n_prompts=n_prompts))
    prompts = generate_prompts(spec)
    note = shortfall(spec, prompts)
    if model is None and tokenizer is None:
        return TaskValidation(spec, prompts, note)
    # torch and the tokenizer libraries only when a vocabulary is asked for: `validate TASK` stays fast
    from circuitbench.models.vocabulary import load_vocabulary, tokenizer_vocabulary
    from circuitbench.prompts.tokenization import tokenize_task

    if tokenizer is not None:
        vocab, unk, source = tokenizer_vocabulary(tokenizer)
        n_ctx = 10**9
    else:
        assert model is not None
        vocab, unk, n_ctx, source = load_vocabulary(model)
    rows, report = tokenize_task(spec, vocab, unk, n_ctx, prompts)
    return TaskValidation(spec, prompts, note, source, len(rows), report)
