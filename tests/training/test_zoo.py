"""training/zoo.py through `train-zoo`: the shipped weights are never replaced without --force, and
the default output is a results folder."""
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
