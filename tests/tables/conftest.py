"""Results the leaderboard and report tests render: real (small) runs, computed once per session."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import circuitbench as cb


@pytest.fixture(scope="session")
def results(tmp_path_factory) -> tuple[Path, Path]:
    """(a results folder, the folder of its extra task): induction on the toy with every default
    method, and ind_trace (previous_token and causal tracing maps for the report)."""
    out = tmp_path_factory.mktemp("results")
    cb.run("induction", "toy-induction-2l", out=out, n_prompts=12, batch_size=12)
    task = tmp_path_factory.mktemp("tasks") / "ind_trace.yaml"
    task.write_text(yaml.safe_dump({"name": "ind_trace", "generator": {"name": "induction", "n_symbols": 40},
                                    "metrics": ["induction_loss"], "methods": ["previous_token", "causal_tracing"],
                                    "circuit": {"top_k": 2}}))
    cb.run(str(task), "toy-induction-2l", out=out, n_prompts=6, methods=["previous_token", "causal_tracing"])
    return out, task


@pytest.fixture(scope="session")
def random_init_results(tmp_path_factory, tiny_models) -> Path:
    """A results folder holding one random-init model's unit (ioi on the tiny GPT-2, seed 1)."""
    out = tmp_path_factory.mktemp("random_init")
    cb.run("ioi", str(tiny_models["gpt2"]), out=out, init="random", seed=1, n_prompts=4, methods=["previous_token"])
    return out
