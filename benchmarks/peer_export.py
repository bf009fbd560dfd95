"""Write what every tool of the peer benchmark reads (runs in circuitbench's venv).

    OUT/model/        GPT-2-small architecture, random init (seed 0), save_pretrained + the GPT-2 BPE tokenizer
    OUT/data.pt       tokens, corrupted [n, L] (IOI clean / ABC counterfactual, all of one length L, so END is
                      the last position for every tool and no padding is involved), answer, distractor [n]
    OUT/edges.json    EDGE_SAMPLE edges of four kinds (circuitbench / EAP-IG names, seed 0) that both circuitbench and
                      auto-circuit patch exactly, one at a time (auto-circuit takes ~16 s per edge here)
    OUT/meta.json     n, L, the prompt indices kept from circuitbench's IOI set, the task spec

The peers' scripts read only these files (they never import circuitbench).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from circuitbench.models.tokenizers import gpt2_bpe_tokenizer  # noqa: E402
from circuitbench.models.vocabulary import load_vocabulary  # noqa: E402
from circuitbench.prompts.encoding import EncodedPrompts, encode_task  # noqa: E402
from circuitbench.specs.catalog import load_task, model_registry  # noqa: E402


def equal_length_rows(data: EncodedPrompts, n: int) -> tuple[list[int], int]:
    """The first `n` prompts of the most common length whose counterfactual has that length too."""
    lengths = data.lengths.tolist()
    other = data.corrupted_lengths
    same = [i for i in range(len(data)) if other is None or int(other[i]) == lengths[i]]
    length, count = Counter(lengths[i] for i in same).most_common(1)[0]
    rows = [i for i in same if lengths[i] == length][:n]
    if len(rows) < n:
        raise SystemExit(f"only {count} IOI prompts of length {length}; raise --pool")
    return rows, length


def select(data: EncodedPrompts, rows: list[int], length: int) -> EncodedPrompts:
    """The prompts at `rows`, trimmed to `length` columns (all of them are that long)."""
    idx = torch.tensor(rows)
    return replace(
        data, texts=[data.texts[i] for i in rows], tokens=data.tokens[idx, :length],
        corrupted=None if data.corrupted is None else data.corrupted[idx, :length], lengths=data.lengths[idx],
        answer=data.answer[idx], distractor=data.distractor[idx],
        positions={k: v[idx] for k, v in data.positions.items()},
        score_mask=data.score_mask[idx, :length], whole=None, offset=0,
        corrupted_lengths=None if data.corrupted_lengths is None else data.corrupted_lengths[idx],
    )


def bench_prompts(vocab, unk, n_ctx, n: int, pool: int) -> tuple[EncodedPrompts, list[int], int]:
    spec = load_task("ioi").model_copy(update={"n_prompts": pool})
    data = encode_task(spec, vocab, unk, n_ctx)
    rows, length = equal_length_rows(data, n)
    return select(data, rows, length), rows, length


EDGE_SAMPLE = 4  # = len(EDGE_KINDS)


EDGE_KINDS = (r"^input->a.*<q>$", r"^a.*<v>$", r"^a.*->m\d+$", r"^m.*->logits$")


def edge_sample(n_layers: int, n_heads: int, seed: int = 0) -> list[str]:
    """One edge of each kind in EDGE_KINDS (embedding -> a query, head -> a value, head -> an MLP,
    MLP -> the logits), drawn with `seed` from the GPT-2 component graph, in circuitbench's names."""
    from circuitbench.models.graph import ComponentGraph

    edges, rng = ComponentGraph(n_layers, n_heads).edges, random.Random(seed)
    return [rng.choice([e for e in edges if re.match(kind, e)]) for kind in EDGE_KINDS]


def export(out: Path, n: int, pool: int, model_name: str = "gpt2-small", seed: int = 0) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    wanted = {"n": n, "pool": pool, "model": model_name, "seed": seed}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in wanted.items()) and (out / "model" / "config.json").exists() and (
                out / "edges.json").exists():
            return meta
    cfg = dict(model_registry()[model_name].hf_config)
    config = AutoConfig.for_model(str(cfg.pop("model_type")), **cfg)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    hf.save_pretrained(out / "model")
    gpt2_bpe_tokenizer().save_pretrained(out / "model")

    vocab, unk, n_ctx, _ = load_vocabulary(model_name, init="random")
    data, rows, length = bench_prompts(vocab, unk, n_ctx, n, pool)
    assert data.corrupted is not None
    torch.save({"tokens": data.tokens.clone(), "corrupted": data.corrupted.clone(), "answer": data.answer.clone(),
                "distractor": data.distractor.clone()}, out / "data.pt")
    (out / "edges.json").write_text(json.dumps(edge_sample(config.n_layer, config.n_head)))
    meta = {**wanted, "length": length, "rows": rows, "task": "ioi", "counterfactual": "ABC (the task's default)",
            "metric": "logit_diff at END (the last position)"}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("results/bench/peers"))
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--pool", type=int, default=256, help="IOI prompts generated to find n of one length")
    args = ap.parse_args()
    meta = export(args.out, args.n, args.pool)
    print(f"exported {meta['n']} prompts of {meta['length']} tokens and the model to {args.out}")


if __name__ == "__main__":
    main()
