"""TransformerLens 2.x (HookedTransformer) side of the peer benchmark.

    python tl2.py DIR exact OUT.json        per-head loop: one full forward per head with the
                                             corrupted hook_z of that head patched in (noising)
    python tl2.py DIR attribution OUT.json  hand-written attribution patching: corrupted run with
                                             cache, clean run with hook_z gradients (weights frozen,
                                             gradients w.r.t. activations only), one backward

values: exact -> "patched" [n_layers][n_heads] mean patched logit difference; attribution ->
"attribution" [n_layers][n_heads] mean over prompts of (z_corr - z_clean) . dm/dz; both also
"m_clean", "m_corr" (mean logit difference of the clean and counterfactual prompts).
"""
from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import torch
from common import Timer, load_data, load_hooked_transformer, logit_diff, setup_threads, write


def is_z(name: str) -> bool:
    return name.endswith("attn.hook_z")


def exact(model, data) -> dict:
    tokens, corrupted = data["tokens"], data["corrupted"]
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    with torch.inference_mode():
        m_clean = logit_diff(model(tokens)[:, -1], data).mean()
        corr_logits, corr_cache = model.run_with_cache(corrupted, names_filter=is_z)
        m_corr = logit_diff(corr_logits[:, -1], data).mean()
        for layer in range(n_layers):
            name = f"blocks.{layer}.attn.hook_z"
            for head in range(n_heads):
                def patch(z, hook, head=head, src=corr_cache[name]):
                    z[:, :, head] = src[:, :, head]
                    return z

                logits = model.run_with_hooks(tokens, fwd_hooks=[(name, patch)])
                out[layer, head] = logit_diff(logits[:, -1], data).mean()
    return {"patched": out.tolist(), "m_clean": float(m_clean), "m_corr": float(m_corr)}


def attribution(model, data) -> dict:
    tokens, corrupted = data["tokens"], data["corrupted"]
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.inference_mode():
        corr_logits, corr_cache = model.run_with_cache(corrupted, names_filter=is_z)
    kept = {}

    def keep(z, hook):
        if not z.requires_grad:  # layer 0: nothing upstream needs a gradient
            z.requires_grad_(True)
        z.retain_grad()
        kept[hook.name] = z
        return z

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(is_z, keep)])
        m = logit_diff(logits[:, -1], data)
        m.sum().backward()
    n = tokens.shape[0]
    scores = torch.stack([((corr_cache[name] - kept[name].detach()) * kept[name].grad).sum((0, 1, 3))
                          for name in sorted(kept, key=lambda s: int(s.split(".")[1]))]) / n
    return {"attribution": scores.double().tolist(), "m_clean": float(m.detach().mean()),
            "m_corr": float(logit_diff(corr_logits[:, -1], data).mean())}


def main() -> None:
    root, work, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    setup_threads()
    model, data = load_hooked_transformer(root / "model"), load_data(root)
    fn = {"exact": exact, "attribution": attribution}[work]
    fn(model, {k: v[:2] for k, v in data.items()})  # warm-up on two prompts (not timed)
    with Timer() as t:
        values = fn(model, data)
    write(out, {"tool": f"TransformerLens {version('transformer-lens')}",
                "work": work, "seconds": t.seconds, "values": values})


if __name__ == "__main__":
    main()
