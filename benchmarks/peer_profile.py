"""Where circuitbench's time goes on the peer benchmark's work (torch.profiler, operator level).

    python benchmarks/peer_profile.py DIR {exact,attribution,eval,eap,eap_ig} [--top 12]

Prints the top operators by self CPU time, and the total, for one run on DIR's prompts.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_circuitbench import EDGE_METHODS, load  # noqa: E402

from circuitbench.scores.evaluation import evaluate  # noqa: E402
from circuitbench.scores.methods.context import MethodContext  # noqa: E402
from circuitbench.scores.scoring import MethodRun, run_methods  # noqa: E402
from circuitbench.specs.registries import METHODS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dir", type=Path)
    ap.add_argument("work", choices=["exact", "attribution", "eval", "eap", "eap_ig"])
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    model, data = load(args.dir)
    method = {"exact": "activation_patching", "attribution": "attribution_patching"}.get(args.work)
    if args.work in EDGE_METHODS:
        ctx = MethodContext(batch_size=len(data), metric="logit_diff", options=EDGE_METHODS[args.work])
        run = lambda: METHODS.get(args.work).run(model, data, ctx)  # noqa: E731
    elif method is None:
        run = lambda: evaluate(model, data, ["logit_diff"], len(data))  # noqa: E731
    else:
        model.block_formats()
        run = lambda: run_methods(model, data, [method], MethodRun(len(data)))  # noqa: E731
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40)
    print(table)


if __name__ == "__main__":
    main()
