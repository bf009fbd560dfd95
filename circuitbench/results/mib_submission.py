"""MIB circuit-localization submissions: package results into the folders MIB asks for, and check a
folder as MIB's backend would (`circuitbench export-mib`, `circuitbench validate-mib`).

What MIB asks for (hannamw/MIB-circuit-track README, "Submitting to the MIB Leaderboard"; the
layout `run_attribution.py` writes and `run_evaluation.py` reads):

    <method>_<ablation>_<level>/         one folder per method (what is uploaded)
      <task>_<model>/                    one per task and model: the task with '-' for '_'
        importances.json                 (ioi_gpt2, arc-easy_llama3; the backend splits at the first '_')

Each task/model folder holds either one .json or .pt file of floating-point importance scores
over every edge, or 9 .json / .pt circuits of binary membership, one at or under each of 0.1 %,
0.2 %, 0.5 %, 1 %, 2 %, 5 %, 10 %, 20 %, 50 % of the edges (MIB's edge-fraction grid without 100 %,
`evaluation.evaluate_area_under_curve`: n = int(p · N) of EAP-IG's N edges). A submission covers
at least 2 models and 2 tasks. A .json is EAP-IG's graph JSON (`Graph.from_json`, MIB's
`load_graph_from_json`: cfg with n_layers, n_heads, d_model, parallel_attn_mlp; nodes {name:
{in_graph, score?}}; edges {name: {score, in_graph}}); a .pt is EAP-IG's `Graph.to_pt` dict (cfg,
src_nodes, dst_nodes, edges_scores and edges_in_graph [n_forward, n_backward], nodes_in_graph).
An importance file ranks edges, or nodes (node scores, MIB's node level); the sizes of the 9
circuits are checked in edges.

The packager writes the importance-score format: each edge method of each result as its EAP-IG
graph JSON, named as run_attribution.py names it (`eap_patching_edge/seq-digits_toy-tasks/
importances.json`; counterfactual patching is MIB's "patching"), so the folder can be given to
MIB's run_evaluation.py as --circuit-dir. Each file says what its scores mean under its
`circuitbench` key (EAP-IG's loaders read only cfg, nodes and edges). It never replaces a file it
did not write, and writes every file or none (staged, then renamed into place).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from circuitbench.circuits.graph_files import EDGE_SCORES_SUFFIX, GraphConfig, check_graph_bounds, is_graph_json
from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph
from circuitbench.output_paths import check_output_dir, inside, resolved, staged_output
from circuitbench.results.edge_score_meaning import score_meaning
from circuitbench.results.export import export_mib
from circuitbench.results.schema import RunResult
from circuitbench.results.store import UnusableResult, read_result

PACKAGED_BY = "circuitbench export-mib"
MARKER = ".circuitbench-mib.json"  # at the package's top, beside the method folders (never uploaded)
IMPORTANCES = "importances.json"
# Binary circuits: one at or under each fraction of EAP-IG's edges (MIB's grid without the full model).
CIRCUIT_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
# MIB's task/model pairs (MIB_circuit_track/utils.py COL_MAPPING, with InterpBench on IOI).
MIB_PAIRS: dict[str, tuple[str, ...]] = {
    "ioi": ("gpt2", "qwen2.5", "gemma2", "llama3", "interpbench"), "mcqa": ("qwen2.5", "gemma2", "llama3"),
    "arithmetic-addition": ("llama3",), "arithmetic-subtraction": ("llama3",), "arc-easy": ("gemma2", "llama3"),
    "arc-challenge": ("llama3",)}
# (n_layers, n_heads, d_model) of MIB's models (their HF configs); InterpBench's is read from its file.
MIB_SHAPES: dict[str, tuple[int, int, int]] = {"gpt2": (12, 12, 768), "qwen2.5": (24, 14, 896),
                                                "gemma2": (26, 8, 2304), "llama3": (32, 32, 4096)}
# MIB's short model names (MODEL_NAME_TO_FULLNAME) for the names a result may carry.
MIB_MODEL_NAMES: dict[str, str] = {"gpt2-small": "gpt2", "gpt2": "gpt2", "openai-community/gpt2": "gpt2",
                                   "Qwen/Qwen2.5-0.5B": "qwen2.5", "google/gemma-2-2b": "gemma2",
                                   "meta-llama/Llama-3.1-8B": "llama3"}
MIB_ABLATIONS: dict[str, str] = {"counterfactual": "patching", "mean": "mean", "zero": "zero"}
PT_KEYS = ("cfg", "src_nodes", "dst_nodes", "edges_scores", "edges_in_graph", "nodes_in_graph")


# --- packaging -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class MibPackage:
    """What `package_mib` wrote: the files (under `out_dir`) and what `validate_mib` says of the folder."""

    out_dir: Path
    files: list[Path]
    methods: list[str]
    tasks: list[str]
    models: list[str]
    problems: list[str] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # results' edge-score files given among the results


def _is_sidecar(path: Path) -> bool:
    """A result's edge-score file (<task>.<method>.edges.json, a graph file), not a result."""
    try:
        raw = json.loads(path.read_text()) if path.name.endswith(EDGE_SCORES_SUFFIX) else None
    except (OSError, ValueError):
        return False
    return is_graph_json(raw)


def mib_task_name(task: str, rename: Mapping[str, str] | None = None) -> str:
    """A task's name in a MIB folder name: renamed if asked, '_' written '-' (the folder splits at '_')."""
    return (rename or {}).get(task, task).replace("_", "-")


def mib_model_name(result: RunResult, rename: Mapping[str, str] | None = None) -> str:
    """A model's name in a MIB folder name: renamed if asked, else MIB's short name of a model MIB
    uses, else its own name ('/' written '--'); random-init weights are marked."""
    name = result.model.name
    out = (rename or {}).get(name) or MIB_MODEL_NAMES.get(name) or name.replace("/", "--")
    return out + ("@random-init" if result.model.init == "random" else "")


def is_mib_package(folder: Path) -> bool:
    """A folder `circuitbench export-mib` wrote (its marker file)."""
    try:
        raw = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("written_by") == PACKAGED_BY


def _written_by_us(path: Path) -> bool:
    try:
        if path.stat().st_size > 1 << 30:
            return False
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    meta = raw.get("circuitbench") if isinstance(raw, dict) else None
    return isinstance(meta, dict) and meta.get("written_by") == PACKAGED_BY


def package_mib(results: Sequence[str | Path], out_dir: str | Path, methods: Sequence[str] | None = None,
                rename: Mapping[str, str] | None = None, force: bool = False) -> MibPackage:
    """Package the edge scores of `results` (RunResult files) as a MIB submission under `out_dir`:
    `<method>_<ablation>_edge/<task>_<model>/importances.json` for each edge method (`methods`:
    those only). `rename` maps our task or model names to MIB's. Checked before anything is
    written: every result complete with edge scores, no two results in one folder, `out_dir` new,
    empty or an earlier package, and no file there replaced that this command did not write
    (--force: replace anyway). Returns the files and the problems `validate_mib` finds."""
    out = Path(out_dir)
    if not results:
        raise CircuitbenchError("export-mib: give at least one RunResult.")
    loaded: list[tuple[Path, RunResult]] = []
    skipped: list[Path] = []
    for given in results:
        path = Path(given)
        try:
            result = read_result(path)
        except UnusableResult:
            if _is_sidecar(path):  # `results/*/*.json` names the results' edge-score files too
                skipped.append(path)
                continue
            raise
        if result.status != "complete":
            raise CircuitbenchError(f"{path}: not a complete RunResult (the unit failed); rerun it or leave it out.")
        loaded.append((path, result))
    if not loaded:
        raise CircuitbenchError(f"export-mib: {len(skipped)} edge-score files and no RunResult; give the results "
                                "(<model>/<task>.json), whose edge scores they are.")
    wanted = list(methods) if methods else None
    if wanted:
        known = sorted({m for _, r in loaded for m in r.edge_scores})
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise CircuitbenchError(f"--method {unknown[0]}: no result holds its edge scores (edge methods in them: "
                                    f"{', '.join(known) or 'none'}).")
    plan: dict[Path, tuple[Path, RunResult, str]] = {}
    inputs: list[Path] = []
    for path, result in loaded:
        chosen = [m for m in result.edge_scores if wanted is None or m in wanted]
        if not chosen:
            raise CircuitbenchError(f"{path}: holds no edge scores{' of ' + ', '.join(wanted) if wanted else ''}; MIB "
                                    "scores edges. Run the task with an edge method (eap, eap_ig, edge_patching).")
        inputs += [path, *(path.parent / s.file for s in result.edge_scores.values())]
        for method in chosen:
            ablation = str(result.edge_scores[method].settings.get("ablation", "counterfactual"))
            folder = f"{method}_{MIB_ABLATIONS.get(ablation, ablation)}_edge"
            pair = f"{mib_task_name(result.task.name, rename)}_{mib_model_name(result, rename)}"
            target = inside(out, folder, pair, IMPORTANCES, what="export-mib: a folder name")
            if target in plan:
                raise CircuitbenchError(f"{path} and {plan[target][0]}: both would be {folder}/{pair}/{IMPORTANCES} "
                                        "(same task, model and method); package one of them.")
            plan[target] = (path, result, method)
    check_output_dir(out, "--out", force=force, ours=is_mib_package,
                     what="a MIB submission folder `circuitbench export-mib` wrote")
    given = {resolved(p, "--out") for p in inputs}
    for target in plan:
        if resolved(target, "--out") in given:
            raise CircuitbenchError(f"--out {out}: {target} is one of the inputs; writing there would replace it. Give "
                                    "another folder.")
        if target.exists() and not force and not _written_by_us(target):
            raise CircuitbenchError(f"--out {out}: {target} exists and was not written by export-mib; writing there "
                                    "would replace it. Give another folder, or pass --force to replace it.")
    files: list[Path] = []
    with staged_output(out) as staging:
        for target, (path, result, method) in plan.items():
            graph = export_mib(result, method)  # the result reads its sidecar; the circuit marked when it is method's
            meta = graph.setdefault("circuitbench", {})
            meta.update(written_by=PACKAGED_BY, result=path.name, scores=score_meaning(result, method).model_dump())
            staged = staging / target.relative_to(out)
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_text(json.dumps(graph) + "\n")
            files.append(target)
        (staging / MARKER).write_text(json.dumps({"written_by": PACKAGED_BY}) + "\n")
    return MibPackage(out, sorted(files), sorted({p.parent.parent.name for p in files}),
                      sorted({p.parent.name.split("_", 1)[0] for p in files}),
                      sorted({p.parent.name.split("_", 1)[1] for p in files}), validate_mib(out), skipped)


# --- validation ----------------------------------------------------------------------------------

@dataclass
class _FileInfo:
    """What one circuit file holds, once read (or None fields when it could not be read)."""

    shape: tuple[int, int, bool] | None = None  # n_layers, n_heads, parallel_attn_mlp
    d_model: int | None = None
    n_edges: int = 0  # EAP-IG's edges of its cfg (MLPs always, as EAP-IG builds the graph)
    in_graph: int = 0  # edges marked in the circuit
    distinct_scores: int = 0  # distinct score values over the listed edges (2 is enough to rank)
    distinct_node_scores: int = 0  # the same over node scores (a node-level submission ranks nodes)
    problems: list[str] = field(default_factory=list)


def _graph_of(cfg_raw: object, info: _FileInfo, where: str) -> ComponentGraph | None:
    """EAP-IG's graph of a file's cfg (MLPs always: Graph.from_model builds them), or None with a problem."""
    try:
        cfg = GraphConfig.model_validate(cfg_raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(map(str, first["loc"]))
        info.problems.append(f"{where}: cfg{'.' + loc if loc else ''}: {first['msg']} (MIB builds the graph from cfg: "
                             "n_layers, n_heads, d_model, parallel_attn_mlp).")
        return None
    try:
        check_graph_bounds(cfg.n_layers, cfg.n_heads, where, True, cfg.parallel_attn_mlp)
    except CircuitbenchError as e:
        info.problems.append(str(e))
        return None
    if cfg.d_model is None:
        info.problems.append(f"{where}: cfg.d_model: missing; MIB's loader builds a neuron-level graph "
                             "(load_graph_from_json, Graph.from_model(cfg, neuron_level=True)) that needs it.")
    info.shape, info.d_model = (cfg.n_layers, cfg.n_heads, cfg.parallel_attn_mlp), cfg.d_model
    graph = ComponentGraph(cfg.n_layers, cfg.n_heads, has_mlp=True, parallel_attn_mlp=cfg.parallel_attn_mlp)
    info.n_edges = graph.n_edges
    return graph


def _bad(problems: list[str], where: str, items: list[str], what: str) -> None:
    if items:
        more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
        problems.append(f"{where}: {'; '.join(items[:3])}{more}: {what}")


def _read_json_circuit(path: Path, where: str) -> _FileInfo:
    info = _FileInfo()
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        info.problems.append(f"{where}: not readable JSON ({e}).")
        return info
    if not isinstance(raw, dict) or not all(k in raw for k in ("cfg", "nodes", "edges")):
        found = ", ".join(map(str, raw)) if isinstance(raw, dict) else "a JSON " + type(raw).__name__
        info.problems.append(f"{where}: not an EAP-IG graph file: MIB's loader needs the keys cfg, nodes and edges "
                             f"(found {found}).")
        return info
    graph = _graph_of(raw["cfg"], info, where)
    if graph is None:
        return info
    nodes, edges = raw["nodes"], raw["edges"]
    if not isinstance(nodes, dict) or not isinstance(edges, dict):
        info.problems.append(f"{where}: nodes and edges must be JSON objects keyed by name.")
        return info
    known_nodes = set(graph.nodes)
    _bad(info.problems, where, [f"nodes[{n!r}]" for n in nodes if n not in known_nodes],
         "not nodes of the cfg's graph (input, a{L}.h{H}, m{L}, logits).")
    _bad(info.problems, where, [f"nodes[{n!r}]" for n, v in nodes.items() if n != "logits" and not (
        isinstance(v, dict) and isinstance(v.get("in_graph"), bool))],
         "each node must be {\"in_graph\": true|false, …}: MIB's load_graph_from_json reads node['in_graph'].")
    unknown, malformed, values = [], [], set()
    for name, entry in edges.items():
        try:
            graph.edge_position(name)
        except ValueError:
            unknown.append(f"edges[{name!r}]")
            continue
        score = entry.get("score") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("in_graph"), bool) or isinstance(score, bool) or \
                not isinstance(score, (int, float)) or not math.isfinite(score):
            malformed.append(f"edges[{name!r}]")
            continue
        info.in_graph += entry["in_graph"]
        values.add(float(score))
    node_values = {float(v["score"]) for v in nodes.values() if isinstance(v, dict) and isinstance(
        v.get("score"), (int, float)) and not isinstance(v.get("score"), bool) and math.isfinite(v["score"])}
    info.distinct_node_scores = len(node_values)
    _bad(info.problems, where, unknown, "not edges of the cfg's graph.")
    _bad(info.problems, where, malformed, "each edge must be {\"score\": a finite number, \"in_graph\": true|false}: "
         "MIB's loaders read both (a circuit of binary membership too: write score 0).")
    info.distinct_scores = len(values)
    return info


def _read_pt_circuit(path: Path, where: str) -> _FileInfo:
    import pickle

    import torch

    info = _FileInfo()
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        info.problems.append(f"{where}: not a torch file of tensors in a dict ({first[:160]}).")
        return info
    if not isinstance(raw, dict) or not all(k in raw for k in PT_KEYS):
        found = ", ".join(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        info.problems.append(f"{where}: not EAP-IG's Graph.to_pt dict: MIB's load_graph_from_pt needs the keys "
                             f"{', '.join(PT_KEYS)} (found {found}).")
        return info
    graph = _graph_of(raw["cfg"], info, where)
    if graph is None:
        return info
    n_fwd, n_bwd = len(graph.sources), len(graph.destinations)
    scores, in_graph, nodes = raw["edges_scores"], raw["edges_in_graph"], raw["nodes_in_graph"]
    for key, value, shape in (("edges_scores", scores, (n_fwd, n_bwd)), ("edges_in_graph", in_graph, (n_fwd, n_bwd)),
                              ("nodes_in_graph", nodes, (n_fwd,))):
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            info.problems.append(f"{where}: {key}: {got}, expected a tensor of shape {list(shape)} (EAP-IG's "
                                 "[n_forward, n_backward] for the cfg).")
    for key, names in (("src_nodes", graph.sources), ("dst_nodes", graph.destinations)):
        if list(raw[key]) != names:
            info.problems.append(f"{where}: {key}: not EAP-IG's order for the cfg ({names[:3]} …).")
    if info.problems:
        return info
    real = torch.from_numpy(graph.real_edges)
    values = scores.double()[real]
    if not torch.isfinite(values).all():
        info.problems.append(f"{where}: edges_scores: {int((~torch.isfinite(values)).sum())} scores are not finite.")
        return info
    info.in_graph = int(in_graph.bool()[real].sum())
    info.distinct_scores = int(values.unique().numel())
    node_scores = raw.get("nodes_scores")
    if isinstance(node_scores, torch.Tensor) and node_scores.is_floating_point():
        info.distinct_node_scores = int(node_scores[torch.isfinite(node_scores)].unique().numel())
    return info


def _read_circuit(path: Path, where: str) -> _FileInfo:
    return _read_pt_circuit(path, where) if path.suffix == ".pt" else _read_json_circuit(path, where)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _validate_pair(folder: Path, where: str, leaderboard: bool, model: str) -> tuple[list[str], _FileInfo | None]:
    """Problems of one <task>_<model> folder, and what its first readable file says of the model."""
    problems: list[str] = []
    entries = _visible(folder)
    circuits = [p for p in entries if p.is_file() and p.suffix in (".json", ".pt")]
    for p in entries:
        if p not in circuits:
            problems.append(f"{where}/{p.name}: {'a folder' if p.is_dir() else 'not a .json or .pt circuit file'}; "
                            "MIB reads only circuit files here. Move it out.")
    if len(circuits) not in (1, len(CIRCUIT_FRACTIONS)):
        problems.append(f"{where}: holds {len(circuits)} circuit files; MIB takes one file of importance scores or "
                        f"{len(CIRCUIT_FRACTIONS)} circuits (one at or under each of "
                        f"{', '.join(f'{100 * f:g} %' for f in CIRCUIT_FRACTIONS)} of the edges).")
    infos = [(p, _read_circuit(p, f"{where}/{p.name}")) for p in circuits]
    for _, info in infos:
        problems += info.problems
    readable = [(p, i) for p, i in infos if not i.problems]
    shapes = {i.shape for _, i in readable}
    if len(shapes) > 1:
        problems.append(f"{where}: its files are of different models ({' vs '.join(map(str, sorted(shapes)))}).")
    if len(circuits) == 1 and readable:
        info = readable[0][1]
        if info.distinct_scores < 2 and info.distinct_node_scores < 2:
            problems.append(f"{where}/{readable[0][0].name}: every edge (and node) has the same score; importance "
                            "scores must rank the edges or nodes (MIB keeps the top n = int(p · N) of them).")
    elif len(circuits) == len(CIRCUIT_FRACTIONS) and len(readable) == len(circuits) and len(shapes) == 1:
        counts = sorted((i.in_graph, p.name) for p, i in readable)
        n = readable[0][1].n_edges
        for (count, name), fraction in zip(counts, CIRCUIT_FRACTIONS):
            if count > int(fraction * n):
                problems.append(f"{where}: no circuit at or under {100 * fraction:g} % of the {n} edges "
                                f"(≤ {int(fraction * n)}); the smallest left, {name}, has {count}. MIB needs one "
                                "circuit per size.")
                break
    first = readable[0][1] if readable else None
    if leaderboard and first is not None and model in MIB_SHAPES and first.shape is not None:
        layers, heads, d_model = MIB_SHAPES[model]
        if first.shape[:2] != (layers, heads) or first.d_model not in (None, d_model):
            problems.append(f"{where}: a graph of {first.shape[0]} layers × {first.shape[1]} heads (d_model "
                            f"{first.d_model}), but MIB's {model} has {layers} × {heads} (d_model {d_model}).")
    return problems, first


def _validate_submission(folder: Path, where: str, leaderboard: bool) -> list[str]:
    problems: list[str] = []
    pairs: list[tuple[str, str]] = []
    shapes: dict[str, tuple[tuple[int, int, bool] | None, str]] = {}
    entries = _visible(folder)
    if not entries:
        return [f"{where}: empty; MIB expects one <task>_<model> folder per task and model."]
    for p in entries:
        sub = f"{where}/{p.name}"
        if not p.is_dir():
            problems.append(f"{sub}: a file among the task/model folders; MIB reads every entry here as a "
                            "<task>_<model> folder. Move it out.")
            continue
        task, _, model = p.name.partition("_")
        if not task or not model:
            problems.append(f"{sub}: not named <task>_<model> (e.g. ioi_gpt2, arc-easy_llama3: the task with '-' for "
                            "'_', MIB splits the name at the first '_').")
            continue
        if leaderboard and model not in MIB_PAIRS.get(task, ()):
            known = "; ".join(f"{t}: {', '.join(ms)}" for t, ms in MIB_PAIRS.items())
            problems.append(f"{sub}: not one of MIB's tasks and models ({known}).")
        pair_problems, info = _validate_pair(p, sub, leaderboard, model)
        problems += pair_problems
        pairs.append((task, model))
        if info is not None and info.shape is not None:
            seen = shapes.setdefault(model, (info.shape, sub))
            if seen[0] != info.shape:
                problems.append(f"{sub}: model {model} has a graph of {info.shape[0]} × {info.shape[1]} here but "
                                f"{seen[0][0]} × {seen[0][1]} in {seen[1]}.")
    models, tasks = {m for _, m in pairs}, {t for t, _ in pairs}
    if len(models) < 2 or len(tasks) < 2:
        problems.append(f"{where}: covers {len(models)} model(s) ({', '.join(sorted(models)) or 'none'}) and "
                        f"{len(tasks)} task(s) ({', '.join(sorted(tasks)) or 'none'}); MIB requires at least 2 models "
                        "and 2 tasks.")
    return problems


def validate_mib(folder: str | Path, leaderboard: bool = False) -> list[str]:
    """The problems MIB would find with a submission folder (empty: valid), each naming the folder
    or file and what to do. `folder` is one method's folder of <task>_<model> folders, or a folder
    of such method folders (what `package_mib` writes). `leaderboard`: also require MIB's own
    task/model pairs and their models' shapes (toy tasks and models are then problems)."""
    root = Path(folder)
    if not root.is_dir():
        raise CircuitbenchError(f"{root}: not a folder; give a MIB submission folder (one per method, holding "
                                "<task>_<model> folders) or a folder of them.")
    subs = [p for p in _visible(root) if p.is_dir()]
    if subs and all(any(q.is_dir() for q in _visible(p)) for p in subs):  # method folders of task/model folders
        problems: list[str] = []
        for p in subs:
            problems += _validate_submission(p, str(p), leaderboard)
        return problems
    return _validate_submission(root, str(root), leaderboard)
