"""circuitbench/training/config.py: what `train` trains, as data, importable without torch, and
`TrainConfig.from_options` (flat options as the CLI names them; errors name the flags)."""
from __future__ import annotations

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
