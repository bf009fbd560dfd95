"""The shipped toy zoo: `train-zoo` never replaces the shipped weights without --force and writes to a
results folder by default; every toy does the tasks models.yaml says it does (test_metrics), on
enough test prompts, as measured here."""
from __future__ import annotations

import hashlib
from pathlib import Path

from circuitbench.models.toy import ZOO_DIR

from helpers import cli


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def test_train_zoo_never_replaces_the_shipped_weights_without_force(capsys, tmp_path, monkeypatch):
    shipped = ZOO_DIR / "toy-induction-2l"
    before = _digest(shipped)
    code, _, err = cli(capsys, "train-zoo", "toy-induction-2l", "--out", str(shipped), "--steps", "2")
    assert code == 2 and "shipped" in err and "--force" in err
    assert _digest(shipped) == before
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "train-zoo", "toy-induction-2l", "--steps", "2")
    assert code == 0, err
    assert (tmp_path / "results" / "zoo" / "toy-induction-2l" / "model.safetensors").is_file()
    assert _digest(shipped) == before


def test_the_default_output_and_steps_are_the_zoos():
    from circuitbench.training.zoo import recipe_of, zoo_output_dir

    assert zoo_output_dir("toy-induction-2l") == Path("results") / "zoo" / "toy-induction-2l" != ZOO_DIR / "x"
    assert zoo_output_dir("toy-induction-2l", Path("elsewhere")) == Path("elsewhere")
    recipe = recipe_of("toy-induction-2l")
    assert recipe.total_steps() == recipe.default_steps and recipe.total_steps(7) == 7


# --- the shipped toys do the tasks they claim (issue 23, point 8) -------------------------------------------

BAR = 0.9  # top-1 accuracy on the test split, the bar a toy must clear to claim a task
MIN_PROMPTS = 32  # test prompts a claim rests on, unless the task's test split holds fewer in all
# suite tasks no shipped toy reaches the bar on, and why (measured; see docs/guide/toy-models.md)
UNCLAIMED: dict[str, str] = {
    "fibonacci": "held-out starts make most test answers sums never seen in training; with numbers as atomic "
                 "tokens toy-tasks gets exactly the prompts whose last sum occurs in training (0.41), a "
                 "fibonacci-only toy with the number prior 0.72-0.77",
    "x2": "17 test prompts, the whole split; 5 end in a number no x2 train prompt holds (184, 216, 232, 264 "
          "only in fibonacci's, 360 in no train split): toy-tasks and an x2-only toy both 0.71",
}


def _claims() -> list[tuple[str, str, dict[str, float]]]:
    from circuitbench.specs.catalog import model_registry

    return [(name, task, recorded) for name, spec in model_registry().items() if spec.source == "toy"
            for task, recorded in spec.test_metrics.items()]


def _top1(model, data) -> float:
    """Top-1 accuracy computed from the logits here, not by the harness's metric: for a task with an
    answer, argmax at the prompt's last token is the answer's token; for induction, argmax at each
    scored position of the repeat is the next token (pooled over the repeats' tokens)."""
    import torch

    hits = total = 0
    for start in range(0, len(data), 64):
        batch = data.batch(start, min(start + 64, len(data)))
        logits = model.run(batch.tokens)
        if data.has_answer:
            pred = logits[torch.arange(len(batch)), batch.lengths - 1].argmax(-1)
            hits, total = hits + int((pred == batch.answer).sum()), total + len(batch)
        else:  # score_mask marks scored *targets*: token t is predicted at t - 1
            mask = batch.score_mask[:, 1:]
            hits += int(((logits[:, :-1].argmax(-1) == batch.tokens[:, 1:]) & mask).sum())
            total += int(mask.sum())
    return hits / total


def test_every_shipped_toy_does_what_it_claims_on_enough_test_prompts():
    """Each (toy, task) of models.yaml's test_metrics: >= 0.9 top-1 accuracy on the task's test split,
    on >= 32 prompts or on every prompt the split holds; the recorded figures are what the model does."""
    from circuitbench.models.loading import load_model
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.prompts.generate import generate_prompts
    from circuitbench.scores.evaluation import evaluate
    from circuitbench.specs.catalog import load_task

    claims = _claims()
    models = {name: load_model(name, device="cpu") for name in {name for name, _, _ in claims}}
    measured = {}
    for name, task, recorded in claims:
        spec, model = load_task(task), models[name]
        data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx)
        assert spec.split == "test" and data.report.n_dropped == 0, (name, task)
        if len(data) < MIN_PROMPTS:  # only where the task's space allows no more
            assert len(generate_prompts(spec.model_copy(update={"n_prompts": "all"})).prompts) == len(data), (
                f"{name}/{task}: {len(data)} test prompts although the split holds more")
        measured[name, task] = (len(data), _top1(model, data))
        clean, _ = evaluate(model, data, list(recorded), 64)
        for metric, value in recorded.items():
            assert abs(float(clean[metric].mean()) - value) < 1e-4, (name, task, metric, float(clean[metric].mean()))
    failing = {k: v for k, v in measured.items() if v[1] < BAR}
    assert not failing, f"below {BAR} top-1 accuracy on the test split (n, accuracy): {failing}"


def test_every_suite_task_is_claimed_by_a_shipped_toy_or_said_not_to_be():
    from circuitbench.specs.catalog import expand_task_names

    claimed = {task for _, task, _ in _claims()}
    assert claimed | set(UNCLAIMED) == set(expand_task_names(["suite"])) and not claimed & set(UNCLAIMED)
