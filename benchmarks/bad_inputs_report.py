"""Run the table of bad invocations (tests/bad_inputs.py) against this checkout and, optionally,
another one (`--before DIR`, e.g. a git worktree of an older commit), each case in a fresh
process, and print a Markdown table: exit code, traceback or not, message found or not.

    python benchmarks/bad_inputs_report.py --before /tmp/before
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from bad_inputs import CASES, build_files  # noqa: E402


def tiny_gpt2(folder: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from circuitbench.models.tokenizers import gpt2_bpe_tokenizer

    config = AutoConfig.for_model("gpt2", n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=50257)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder / "gpt2")
    gpt2_bpe_tokenizer().save_pretrained(folder / "gpt2")
    return folder / "gpt2"


def run_case(checkout: Path, args: list[str], root: Path, cache: Path) -> tuple[int, bool, str]:
    env = dict(os.environ, PYTHONPATH=str(checkout), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200",
               CIRCUITBENCH_CACHE=str(cache))
    argv = [a.replace("{tmp}", str(root)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "circuitbench.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=900, cwd=root)
    text = proc.stdout + proc.stderr
    return proc.returncode, "Traceback" in text, text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, help="another checkout to compare with")
    parser.add_argument("--only", default="", help="comma-separated case ids (default: every case)")
    parser.add_argument("--after", action=argparse.BooleanOptionalAction, default=True, help="run this checkout too")
    opts = parser.parse_args()
    checkouts = ([("before", opts.before)] if opts.before else []) + ([("after", REPO)] if opts.after else [])
    only = set(filter(None, opts.only.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = tiny_gpt2(tmp_path / "models")
        rows = []
        for case_id, args, expected in CASES:
            if only and case_id not in only:
                continue
            cells = []
            for _, checkout in checkouts:
                root = Path(tempfile.mkdtemp(dir=tmp_path))
                build_files(root, model)
                code, trace, text = run_case(checkout, args, root, tmp_path / "cache")
                cells.append(f"{code}{' traceback' if trace else ''}{'' if expected in text else ' (no message)'}")
            rows.append((case_id, *cells))
            print(f"{case_id}: {' → '.join(cells)}", file=sys.stderr, flush=True)
    header = ["case", *(name for name, _ in checkouts)]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
