"""circuitbench/training/config.py: what `train` trains, as data, importable without torch, and
`TrainConfig.from_options` (flat options as the CLI names them; errors name the flags)."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from circuitbench.environment import threads_for
from circuitbench.errors import CircuitbenchError
from circuitbench.training.config import ARCH_PRESETS, DEFAULT_ARCH, NoiseConfig, TrainConfig, arch_from


def test_importing_the_config_imports_no_torch():
    code = ("import sys, circuitbench.training.config; "
            "print([m for m in ('torch', 'transformers', 'transformer_lens') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_from_options_builds_the_preset_with_overrides_and_threads_by_size():
    config = TrainConfig.from_options(["induction"], d_model=32, n_heads=2, steps=5, lr=1e-3)
    assert config.arch == arch_from(DEFAULT_ARCH, d_model=32, n_heads=2)
    assert config.arch.n_layers == ARCH_PRESETS[DEFAULT_ARCH].n_layers
    assert (config.steps, config.lr, config.tasks, config.noise) == (5, 1e-3, ["induction"], None)
    assert config.threads == threads_for(config.arch.approx_params()) == 1  # toy-sized
    assert TrainConfig.from_options(["x2"], threads=3).threads == 3
    noisy = TrainConfig.from_options(["x2"], arch="gpt-2l", noise_site="resid", noise_scale=0.1, smear_keys=True)
    assert noisy.noise == NoiseConfig(site="resid", scale=0.1) and noisy.arch.smear_keys and not noisy.arch.attn_only


@pytest.mark.parametrize("options, message", [
    ({"noise_site": "resid"}, "--noise-site and --noise-scale go together"),
    ({"noise_scale": 0.1}, "--noise-site and --noise-scale go together"),
    ({"n_layers": 0}, "--layers: Input should be greater than or equal to 1"),
    ({"d_model": 30}, "d_model=30 is not a multiple of n_heads=4"),
    ({"noise_site": "mlp", "noise_scale": 0.1}, "--noise-site: Input should be"),
    ({"steps": 0}, "--steps: Input should be greater than or equal to 1"),
    ({"arch": "attn-only-3l"}, "Unknown --arch 'attn-only-3l'"),
])
def test_a_bad_option_names_its_flag(options, message):
    with pytest.raises(CircuitbenchError, match=message):
        TrainConfig.from_options(["induction"], **options)


def test_no_task_names_the_task_flag():
    with pytest.raises(CircuitbenchError, match="--task: List should have at least 1 item"):
        TrainConfig.from_options([])


def test_the_defaults_keep_a_constant_rate_and_the_schedule_warms_up_then_decays():
    steady = TrainConfig.from_options(["x2"], steps=100, lr=1e-3)
    assert (steady.weight_decay, steady.warmup_steps, steady.lr_schedule, steady.task_weights) == (
        0.01, 0, "constant", {})
    assert {steady.lr_at(s) for s in range(1, 101)} == {1e-3}
    cosine = TrainConfig.from_options(["x2"], steps=110, lr=1e-3, warmup_steps=10, lr_schedule="cosine")
    assert [cosine.lr_at(s) for s in (1, 5, 10)] == pytest.approx([1e-4, 5e-4, 1e-3])
    # after warmup: the first step at lr, half way at lr/2, the last just above 0
    last = 1e-3 * (1 + math.cos(0.99 * math.pi)) / 2
    assert [cosine.lr_at(s) for s in (11, 61, 110)] == pytest.approx([1e-3, 5e-4, last])


def test_task_weights_from_the_command_line_and_their_errors():
    config = TrainConfig.from_options(["x2", "fibonacci"], task_weights="fibonacci=3, x2=0.5")
    assert config.task_weights == {"fibonacci": 3.0, "x2": 0.5}
    assert TrainConfig.from_options(["x2"], task_weights="").task_weights == {}
    for bad in ("fibonacci", "fibonacci=0", "=2", "fibonacci=many"):
        with pytest.raises(CircuitbenchError, match=r"--task-weights .*expected task=weight"):
            TrainConfig.from_options(["fibonacci"], task_weights=bad)
    with pytest.raises(CircuitbenchError, match="--warmup-steps|warmup_steps=5 must be below steps=5"):
        TrainConfig.from_options(["x2"], steps=5, warmup_steps=5)
