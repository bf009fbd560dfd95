"""Counterfactuals of another token length aligned span by span (scores/alignment.py): the mapping on
hand-built spans, the refusal naming a prompt whose counterfactual lacks a span, identity on aligned
prompts, and, on IOI with multi-token counterfactual names (tasks/examples/ioi_long_names.yaml) and a
tiny random-init GPT-2, activation patching and EAP against references that align the corrupted
activations by hand, segment by segment, from each segment's own tokenization."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.loading import load_model
from circuitbench.prompts.base import Prompt, PromptSet, Segment
from circuitbench.prompts.encoding import Batch, encode_prompts, encode_task
from circuitbench.prompts.generate import generate_prompts
from circuitbench.scores.alignment import align_counterfactual, check_alignment
from circuitbench.scores.edges import node_outputs
from circuitbench.scores.interventions import BaseRun, base_runs, oriented_metric, record_base_run
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.edges import eap
from circuitbench.scores.methods.patching import activation_patching
from circuitbench.scores.scoring import check_methods
from circuitbench.specs.catalog import load_task

from helpers import destination_gradient

LONG = str(Path(__file__).parents[2] / "tasks" / "examples" / "ioi_long_names.yaml")


def _batch(spans: list[list[int]], corrupted_spans: list[list[int]]) -> Batch:
    """A batch holding only what alignment reads: spans, lengths (-1: padding)."""
    width = max(len(r) for r in spans + corrupted_spans)
    pad = lambda rows: torch.tensor([r + [-1] * (width - len(r)) for r in rows])  # noqa: E731
    s, c = pad(spans), pad(corrupted_spans)
    n = len(spans)
    return Batch(tokens=torch.zeros(n, width, dtype=torch.long), corrupted=torch.zeros(n, width, dtype=torch.long),
                 lengths=(s >= 0).sum(1), answer=torch.zeros(n, dtype=torch.long),
                 distractor=torch.zeros(n, dtype=torch.long), positions={}, score_mask=s >= 0,
                 corrupted_lengths=(c >= 0).sum(1), spans=s, corrupted_spans=c)


def test_equal_spans_align_token_to_token():
    rows = [[0, 1, 2, 2, 3], [0, 1, 1, 2, 3]]
    assert align_counterfactual(_batch(rows, rows)).tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]


def test_unequal_spans_are_right_aligned():
    # span 1 (a name): 1 clean token, 3 corrupted; span 3: 3 clean tokens, 1 corrupted
    batch = _batch([[0, 1, 2, 3, 3, 3, 4]], [[0, 1, 1, 1, 2, 3, 4]])
    # clean 1 <- corrupted 3 (the name's last token); clean 3,4,5 <- corrupted 5 (its only token: first = last)
    assert align_counterfactual(batch).tolist() == [[0, 3, 4, 5, 5, 5, 6]]
    # longer clean name, shorter counterfactual, padding after the clean prompt reads its own position
    batch = _batch([[0, 1, 1, 2]], [[0, 1, 2, 2, 2, 2]])
    assert align_counterfactual(batch).tolist() == [[0, 1, 1, 5, 4, 5]]
    # two-token clean span over a three-token one: the last two tokens
    assert align_counterfactual(_batch([[0, 1, 1, 2]], [[0, 1, 1, 1, 2]])).tolist() == [[0, 2, 3, 4, 4]]


def test_aligned_batches_align_with_themselves():
    batch = replace(_batch([[0, 1, 2]], [[0, 1, 2]]), corrupted_lengths=None)
    assert align_counterfactual(batch).tolist() == [[0, 1, 2]]


def _prompt(io: str, s: str, corrupted: list[Segment]) -> Prompt:
    clean = [Segment(text="When"), Segment(text=f" {io}", label="IO"), Segment(text=" and"),
             Segment(text=f" {s}", label="S1"), Segment(text=" went to the store,"), Segment(text=f" {s}", label="S2"),
             Segment(text=" gave a drink to")]
    return Prompt(segments=clean, corrupted_segments=corrupted, answer=f" {io}", distractor=f" {s}", split_key=io)


def test_a_counterfactual_without_a_span_is_refused_naming_the_prompt(gpt2_tokenizer):
    from circuitbench.prompts.encoding import Vocabulary

    vocab = Vocabulary(gpt2_tokenizer, gpt2_tokenizer.bos_token_id, gpt2_tokenizer.eos_token_id, [])
    good = [Segment(text="When"), Segment(text=" Bartholomew", label="IO"), Segment(text=" and"),
            Segment(text=" Anne", label="S1"), Segment(text=" went to the store,"), Segment(text=" Sid", label="S2"),
            Segment(text=" gave a drink to")]
    no_s1 = [Segment(text="When Ptolemy and Anne went to the store,"), Segment(text=" Sid", label="S2"),
             Segment(text=" gave a drink to")]
    ps = PromptSet(task="t", split="test", seed=0, prompts=[_prompt("Mary", "John", good),
                                                            _prompt("Tom", "Kate", no_s1)])
    data = encode_prompts(ps, vocab, has_answer=True, n_ctx=1024, max_drop_fraction=0.0, aligned=False)
    align_counterfactual(data.batch(0, 1))  # the first prompt aligns
    with pytest.raises(CircuitbenchError) as e:
        check_alignment(data)
    message = str(e.value)
    assert "prompt 1 ('When Tom and Kate went to the store, Kate gave a drink to')" in message
    assert "no span 'before IO'" in message  # its first span the counterfactual lacks
    assert "it has BOS, before S2, S2, END" in message and "corrupted_positions" in message


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    torch.set_num_threads(1)
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    spec = load_task(LONG).model_copy(update={"n_prompts": 6, "methods": []})
    prompts = generate_prompts(spec)
    data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx, prompts)
    by_text = {p.text: p for p in prompts.prompts}
    return model, spec, data, [by_text[t] for t in data.texts]


def _hand_alignment(tokenizer, prompt: Prompt) -> list[int]:
    """For each clean token (BOS first), the corrupted position it reads: segment k of the clean
    prompt with segment k of its counterfactual (IOI's share the template), right-aligned, each
    segment tokenized on its own."""
    count = lambda seg: len(tokenizer.encode(seg.text, add_special_tokens=False))  # noqa: E731
    index, at = [0], 1
    for clean, corrupted in zip(prompt.segments, prompt.corrupted_segments, strict=True):
        n, m = count(clean), count(corrupted)
        index += [at + max(0, i + m - n) for i in range(n)]
        at += m
    return index


def test_the_long_names_task_has_counterfactuals_of_other_lengths(tiny):
    model, spec, data, prompts = tiny
    assert not data.aligned and len(data) == 6
    assert (data.corrupted_lengths != data.lengths).sum() >= 4  # most counterfactuals are longer
    for i, prompt in enumerate(prompts):
        n = int(data.lengths[i])
        assert align_counterfactual(data.batch(i, i + 1))[0, :n].tolist() == _hand_alignment(model.vocab.tokenizer,
                                                                                                prompt)


def _single(data, i):
    n, m = int(data.lengths[i]), int(data.corrupted_lengths[i])
    return data.tokens[i, :n][None], data.corrupted[i, :m][None], n, m


def _logit_diff(logits: torch.Tensor, end: int, answer: int, distractor: int) -> float:
    last = logits[0, end].double()
    return float(last[answer] - last[distractor])


def test_unequal_length_activation_patching_equals_patching_one_head_at_a_time_by_hand(tiny):
    model, spec, data, prompts = tiny
    ctx = MethodContext(batch_size=4, metric="logit_diff")
    fast = activation_patching(model, data, ctx)
    n_layers, n_heads = model.n_layers, model.n_heads
    patched = np.zeros((n_layers, n_heads + 1))
    m_clean = m_corr = 0.0
    for i, prompt in enumerate(prompts):
        clean, corrupted, n, m = _single(data, i)
        answer, distractor = int(data.answer[i]), int(data.distractor[i])
        m_clean += _logit_diff(model.run(clean), n - 1, answer, distractor)
        m_corr += _logit_diff(model.run(corrupted), m - 1, answer, distractor)  # its own END
        _, run = record_base_run(model, corrupted)
        index = torch.tensor(_hand_alignment(model.vocab.tokenizer, prompt))
        for layer in range(n_layers):
            z, mlp = run.z[layer][:, index], run.mlp[layer][:, index]
            for h in range(n_heads + 1):
                def patch(x, _h=h, _z=z, _mlp=mlp):
                    x = x.clone()
                    if _h < n_heads:
                        x[:, :, _h] = _z[:, :, _h].to(x.dtype)
                        return x
                    return _mlp.to(x.dtype)

                site = hooks.head_outputs(layer) if h < n_heads else hooks.mlp_out(layer)
                logits = model.run_with_hooks(clean, [(site, patch)])
                patched[layer, h] += _logit_diff(logits, n - 1, answer, distractor)
    k = len(prompts)
    by_hand = (m_clean / k - patched / k) / abs(m_clean / k - m_corr / k)
    assert np.abs(fast.heads - by_hand[:, :n_heads]).max() <= 1e-5 * max(1.0, np.abs(by_hand).max())
    assert np.abs(fast.mlps - by_hand[:, n_heads]).max() <= 1e-5 * max(1.0, np.abs(by_hand).max())
    assert np.abs(by_hand).max() > 1e-3  # the patches do move the metric


def test_unequal_length_eap_equals_the_gradient_formula_with_hand_aligned_outputs(tiny):
    model, spec, data, prompts = tiny
    ctx = MethodContext(batch_size=6, metric="logit_diff")
    scores = eap(model, data, ctx).edges.scores
    graph = model.component_graph()
    batch = data.batch(0, len(data))
    _, clean = record_base_run(model, batch.tokens)
    width = batch.tokens.shape[1]
    aligned = {"resid": [], "z": [], "mlp": []}
    m_corr = 0.0
    for i, prompt in enumerate(prompts):  # each counterfactual on its own, gathered by the hand alignment
        _, corrupted, n, m = _single(data, i)
        m_corr += _logit_diff(model.run(corrupted), m - 1, int(data.answer[i]), int(data.distractor[i]))
        _, run = record_base_run(model, corrupted)
        index = torch.tensor(_hand_alignment(model.vocab.tokenizer, prompt) + [0] * (width - n))
        for key in aligned:
            aligned[key].append([t[:, index] for t in getattr(run, key)])
    stack = lambda key: [torch.cat([per[l] for per in aligned[key]]) for l in range(model.n_layers)]  # noqa: E731
    corrupt = BaseRun(resid=stack("resid"), z=stack("z"), mlp=stack("mlp"))
    valid = (torch.arange(width)[None, :] < batch.lengths[:, None]).float()
    delta = (node_outputs(model, corrupt) - node_outputs(model, clean)) * valid[:, :, None, None]
    m_clean = float(oriented_metric("logit_diff", model.run(batch.tokens), batch).double().sum())
    gap = abs(m_clean - m_corr) / len(data)
    by_hand = np.zeros_like(scores)
    for j, dst in enumerate(graph.destinations):
        grad = destination_gradient(model, clean, batch, dst)
        for i in range(graph.n_upstream(dst)):
            by_hand[i, j] = -float((delta[:, :, i] * grad).sum()) / len(data) / gap
    assert np.abs(scores - by_hand).max() <= 1e-5 * max(1.0, np.abs(by_hand).max())
    assert np.abs(by_hand).max() > 1e-3


def test_aligned_prompts_keep_their_corrupted_run_exactly(tiny):
    model = tiny[0]
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 4}), model.vocab, model.unk_id, model.n_ctx)
    assert data.aligned and data.spans is not None
    ctx = MethodContext(batch_size=4, metric="logit_diff")
    flagged = replace(data, corrupted_lengths=data.lengths.clone())  # the same prompts, run through the alignment
    (_, plain), (_, gathered) = next(base_runs(model, data, ctx, ("corrupted",))), next(
        base_runs(model, flagged, ctx, ("corrupted",)))
    for a, b in zip(plain["corrupted"].resid + plain["corrupted"].z + plain["corrupted"].mlp,
                    gathered["corrupted"].resid + gathered["corrupted"].z + gathered["corrupted"].mlp):
        assert torch.equal(a, b)
    assert torch.equal(plain["corrupted"].metric, gathered["corrupted"].metric)


def test_the_run_refuses_before_compute_when_a_counterfactual_lacks_a_span(tiny):
    model, spec, data, prompts = tiny
    spec = spec.model_copy(update={"methods": ["activation_patching", "ablation"]})
    check_methods(spec, data)  # every counterfactual has the spans
    broken = replace(data, corrupted_spans=data.corrupted_spans.masked_fill(
        data.corrupted_spans == data.span_names.index("S1"), data.span_names.index("IO..S1")))
    with pytest.raises(CircuitbenchError, match=r"Method 'activation_patching' on task 'ioi_long_names': prompt 0 "
                                                r"\('.*'\): its counterfactual has no span 'S1'"):
        check_methods(spec, broken)
    with pytest.raises(CircuitbenchError, match="no named spans to align them by"):
        check_methods(spec, replace(data, spans=None, corrupted_spans=None))


def _reverse_alignment(tokenizer, prompt: Prompt) -> list[int]:
    """_hand_alignment from the counterfactual's side: for each corrupted token, the clean position."""
    swapped = prompt.model_copy(update={"segments": prompt.corrupted_segments, "corrupted_segments": prompt.segments})
    return _hand_alignment(tokenizer, swapped)


def test_unequal_length_denoising_patches_clean_heads_into_the_counterfactual_by_hand(tiny):
    model, spec, data, prompts = tiny
    ctx = MethodContext(batch_size=4, metric="logit_diff", options={"direction": "denoising"})
    fast = activation_patching(model, data, ctx).heads
    patched = np.zeros((model.n_layers, model.n_heads))
    m_clean = m_corr = 0.0
    for i, prompt in enumerate(prompts):
        clean, corrupted, n, m = _single(data, i)
        answer, distractor = int(data.answer[i]), int(data.distractor[i])
        m_clean += _logit_diff(model.run(clean), n - 1, answer, distractor)
        m_corr += _logit_diff(model.run(corrupted), m - 1, answer, distractor)
        _, run = record_base_run(model, clean)
        index = torch.tensor(_reverse_alignment(model.vocab.tokenizer, prompt))
        for layer in range(model.n_layers):
            for h in range(model.n_heads):
                def patch(x, _h=h, _z=run.z[layer][:, index]):
                    x = x.clone()
                    x[:, :, _h] = _z[:, :, _h].to(x.dtype)
                    return x

                logits = model.run_with_hooks(corrupted, [(hooks.head_outputs(layer), patch)])
                patched[layer, h] += _logit_diff(logits, m - 1, answer, distractor)
    k = len(prompts)
    by_hand = (patched / k - m_corr / k) / abs(m_clean / k - m_corr / k)
    assert np.abs(fast - by_hand).max() <= 1e-5 * max(1.0, np.abs(by_hand).max()) and np.abs(by_hand).max() > 1e-3
