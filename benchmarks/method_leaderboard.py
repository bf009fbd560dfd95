"""`make method-leaderboard`: every registered node and edge method on each known-answer model,
one unit per method, for `circuitbench leaderboard --by method` (tables/method_leaderboard.py).

    python benchmarks/method_leaderboard.py --out results/methods tracr_reverse:tracr-reverse ...

- The methods are read from the registry when it runs (`compared_methods()`: every method that
  scores nodes or edges), so methods registered since are on the board without an edit here;
  `--methods a,b` picks some.
- One unit per (task, model, method), written to OUT/<method>/<model>/<task>.json: a method that
  its own guard refuses (max_forwards) or that fails is recorded as failed and the others stand.
- Node methods build node circuits, edge methods edge circuits, each of the known circuit's size
  (top_k = the reference's nodes or edges), so faithfulness and the verdict are those of a circuit
  as large as the answer; the task's ablation and curve settings are kept. The stability
  half-samples are off (the board does not show them; they rerun the method four more times).
- No activation cache: every method pays its own unpatched forwards, so the costs compare.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import circuitbench as cb  # noqa: E402
from circuitbench.circuits.recovery import find_reference  # noqa: E402
from circuitbench.models.loading import load_model  # noqa: E402
from circuitbench.results.store import save_result  # noqa: E402
from circuitbench.specs.catalog import load_task  # noqa: E402
from circuitbench.specs.registries import METHODS  # noqa: E402
from circuitbench.specs.task import CircuitRule, TaskSpec  # noqa: E402
from circuitbench.tables.method_leaderboard import compared_methods  # noqa: E402

# Methods whose circuits MIB grows from the logits backwards (apply_greedy): information flow routes
# scores every edge by how much of its destination's input it is, whether or not that destination
# reaches the logits, so its top-k edges are mostly pruned away as dangling.
GREEDY = ("ifr",)


def board_spec(spec: TaskSpec, method: str, level: str, size: int | None) -> TaskSpec:
    """The task with only `method`, its circuit at `level` of `size` components (None: the task's
    own rule at that level), stability half-samples off."""
    told = spec.circuit.model_dump(exclude_unset=True) if spec.circuit is not None else {}
    rule = {**told, "level": level, "method": "auto", "stability_resamples": 0}
    if size:
        rule.update({"top_k": size, "threshold": None, "fraction": None})
    if level == "edge" and method in GREEDY and rule.get("threshold") is None:
        rule["selection"] = "greedy"
    return spec.model_copy(update={"methods": [method], "circuit": CircuitRule.model_validate(rule)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", metavar="TASK:MODEL", help="known-answer tasks and their models")
    parser.add_argument("--out", required=True, help="results folder (OUT/<method>/<model>/<task>.json)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every node and edge method)")
    parser.add_argument("--n-prompts", type=int, default=None, help="fewer prompts per task (default: the task's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    methods = args.methods.split(",") if args.methods else compared_methods()
    out = Path(args.out)
    print(f"methods: {', '.join(methods)}", flush=True)
    failed = 0
    for pair in args.pairs:
        task, model_name = pair.split(":", 1)
        spec = load_task(task)
        if args.n_prompts:
            spec = spec.model_copy(update={"n_prompts": args.n_prompts})
        model = load_model(model_name)
        reference = find_reference(None, spec.reference_circuits, spec.name, (model.name, model.source), model.source)
        for method in methods:
            level = "edge" if METHODS.get(method).produces == "edge_scores" else "node"
            size = None if reference is None else len(reference.edges) if level == "edge" else len(reference.nodes)
            started = time.perf_counter()
            result = cb.run(board_spec(spec, method, level, size), model, cache=False, fail_on_error=False)
            assert not isinstance(result, list)
            save_result(result, out / method / model.name.replace("/", "__") / f"{spec.name}.json")
            cost = result.method_costs.get(method)
            status = result.status if result.error is None else f"{result.status}: {result.error.message[:120]}"
            failed += result.status != "complete"
            print(f"{task:20s} {method:22s} {time.perf_counter() - started:7.1f} s  "
                  f"{'' if cost is None else f'{cost.forwards:10.1f} fwd  '}{status}", flush=True)
    print(f"{failed} units failed or were refused (listed on the board with the reason)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
