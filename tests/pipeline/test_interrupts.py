"""Ctrl-C and SIGTERM in the middle of a grid: exit 130 / 143 with one line saying what finished
and that --resume continues; finished units intact, no partial files; --resume completes the rest
and keeps what was finished byte for byte."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from circuitbench.results.store import load_result

REPO = Path(__file__).resolve().parents[2]
# Six units after the first: the signal lands mid-grid even when the units are fast and the machine busy.
TASKS = "sorting,induction,x2,arith_k,fibonacci,seq_months,ioi"
N_UNITS = len(TASKS.split(","))


def env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "circuitbench", "run", "--task", TASKS, "--model", "toy-tasks", "--out", str(out),
            "--no-cache", "-q", "--methods", "activation_patching,ablation", *extra]


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_mid_grid_ends_cleanly_and_resume_finishes(tmp_path, sig, code, name):
    out = tmp_path / "r"
    # Ctrl-C as a terminal sends it: a shell's background job (`make test &`, some CI runners) ignores
    # SIGINT, and a Python child keeps an ignored SIGINT ignored. A handler here becomes the default
    # action in the exec'd child (no preexec_fn: forking a process with JAX's threads is unsafe).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(command(out), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    first = out / "toy-tasks" / "sorting.json"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and f"interrupted ({name})" in stderr and "--resume" in stderr
    written = sorted(p.name for p in (out / "toy-tasks").iterdir())
    assert all(not n.startswith(".") for n in written)  # no temp files left behind
    finished = {n: (out / "toy-tasks" / n).read_bytes() for n in written}
    assert 1 <= len(finished) < N_UNITS and f"{len(finished)} of {N_UNITS} units written" in stderr
    assert all(load_result(out / "toy-tasks" / n).status == "complete" for n in finished)

    resumed = subprocess.run(command(out, "--resume"), env=env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(p.name for p in (out / "toy-tasks").iterdir()) == sorted(f"{t}.json" for t in TASKS.split(","))
    for n, before in finished.items():
        assert (out / "toy-tasks" / n).read_bytes() == before  # kept byte for byte
