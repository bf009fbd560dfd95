"""tracr-compiled models: the conversion reproduces tracr's own forward (programs compiled here,
not shipped), the shipped zoo models compute their programs without jax, and circuit.json is
exactly the set of components with weights."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from circuitbench.circuits.circuit import Circuit
from circuitbench.errors import CircuitbenchError
from circuitbench.models.hooks import head_outputs, mlp_out
from circuitbench.models.loading import load_model
from circuitbench.models.toy import ZOO_DIR
from circuitbench.specs.catalog import model_registry

from helpers import cli

# --- the programs, written out in Python (what each position's output must be) -------------

def reverse(seq: list[str]) -> list[str | None]:
    return seq[::-1]


def hist(seq: list[str]) -> list[str | None]:
    return [str(seq.count(x)) for x in seq]


def sort_unique(seq: list[str]) -> list[str | None]:
    return [str(v) for v in sorted(int(x) for x in seq)]


def detect_abc(seq: list[str]) -> list[str | None]:
    return [None if i < 2 else str(seq[i - 2:i + 1] == ["a", "b", "c"]) for i in range(len(seq))]


ZOO = {  # model -> (program in Python, inputs it is defined on)
    "tracr-reverse": (reverse, [list(p) for p in permutations("abcd", 4)] + [list("a"), list("dcbad"), list("aab")]),
    "tracr-hist": (hist, [list("aabcd"), list("ddddd"), list("a"), list("abab"), list("cbcdc")]),
    "tracr-sort-unique": (sort_unique, [[str(v) for v in p] for p in permutations([1, 4, 6, 8], 4)]
                          + [["5"], ["7", "2"], ["3", "8", "1"]]),
    "tracr-detect-abc": (detect_abc, [list("abcab"), list("cabca"), list("aabcc"), list("abc"), list("bcabc")]),
}


def decoded(model, seq: list[str]) -> list[str]:
    """The model's argmax token at each element's position (position 0 is BOS)."""
    tok = model.vocab.tokenizer
    ids = [model.vocab.bos_id] + tok.encode(" ".join(seq), add_special_tokens=False)
    assert len(ids) == len(seq) + 1
    return tok.convert_ids_to_tokens(model.run(torch.tensor([ids]))[0, 1:].argmax(-1).tolist())


def encode(model, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """([batch, pos] BOS + tokens, right-padded as circuitbench batches are; [batch] END index)."""
    tok = model.vocab.tokenizer
    rows = [[model.vocab.bos_id] + tok.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, rows))
    tokens = torch.tensor([r + [model.vocab.pad_id] * (width - len(r)) for r in rows])
    return tokens, torch.tensor([len(r) - 1 for r in rows])


def end_logits(model, texts: list[str], hooks=()) -> torch.Tensor:
    """[batch, d_vocab] logits at each prompt's last token."""
    tokens, end = encode(model, texts)
    return model.run_with_hooks(tokens, list(hooks))[torch.arange(len(texts)), end]


def records_of(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (ZOO_DIR / name / "prompts.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_computes_its_program(name):
    program, inputs = ZOO[name]
    model = load_model(name, device="cpu")
    assert model_registry()[name].source == "tl"
    for seq in inputs:
        want = program(seq)
        got = decoded(model, seq)
        assert [g for g, w in zip(got, want) if w is not None] == [w for w in want if w is not None], seq


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_prompts_are_the_end_position_task(name):
    """prompts.jsonl: answer = the program's output at the last element, the corrupted prompt has
    the same length and the distractor as its answer, and the model prefers the answer."""
    program, _ = ZOO[name]
    records = records_of(name)
    assert len(records) == 64 and set(records[0]) == {"prompt", "answer", "distractor", "corrupted"}
    assert len({len(r["prompt"].split()) for r in records}) > 1  # several lengths
    model = load_model(name, device="cpu")
    tok = model.vocab.tokenizer
    logits = end_logits(model, [r["prompt"] for r in records])
    for r, row in zip(records, logits):
        prompt, corrupted = r["prompt"].split(), r["corrupted"].split()
        assert len(prompt) == len(corrupted) and r["answer"] != r["distractor"]
        assert r["answer"] == f" {program(prompt)[-1]}" and r["distractor"] == f" {program(corrupted)[-1]}"
        answer, distractor = (tok.convert_tokens_to_ids(r[k].strip()) for k in ("answer", "distractor"))
        assert row[answer] - row[distractor] > 0.5


def test_zoo_models_need_no_jax():
    code = ("import sys, torch; from circuitbench.models.loading import load_model; "
            "m = load_model('tracr-reverse', device='cpu'); m.run(torch.tensor([[0, 3, 4]])); "
            "print(sorted(k for k in ('jax', 'tracr', 'haiku') if k in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def nonzero_components(path: Path) -> tuple[list[list[int]], list[int]]:
    """Heads and MLPs with any non-zero weight, read straight from the safetensors file."""
    w = load_file(str(path / "model.safetensors"))
    n_layers = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    heads, mlps = [], []
    for l in range(n_layers):
        n_heads = w[f"blocks.{l}.attn.W_Q"].shape[0]
        for h in range(n_heads):
            if any(np.any(w[f"blocks.{l}.attn.{p}"][h] != 0) for p in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K",
                                                                         "b_V")):
                heads.append([l, h])
        if any(np.any(w[f"blocks.{l}.mlp.{p}"] != 0) for p in ("W_in", "b_in", "W_out")):
            mlps.append(l)
    return heads, mlps


@pytest.mark.parametrize("name", sorted(ZOO))
def test_circuit_json_is_exactly_the_components_with_weights(name):
    path = ZOO_DIR / name
    truth = json.loads((path / "circuit.json").read_text())
    heads, mlps = nonzero_components(path)
    assert truth["heads"] == heads and truth["mlps"] == mlps
    assert truth["nodes"] == [f"a{l}.h{h}" for l, h in heads] + [f"m{l}" for l in mlps]
    assert truth["source"] == "tracr" and truth["program"]
    spec = model_registry()[name]
    circuit = Circuit.load(path / "circuit.json")
    assert circuit.shape == (spec.n_layers, spec.n_heads) and sorted(circuit.heads) == [tuple(h) for h in heads]
    # edges join nodes of the circuit, forward only, ending at the logits
    nodes = {"input", "logits", *truth["nodes"]}
    for edge in truth["edges"]:
        src, dst = edge.split("<")[0].split("->")
        assert src in nodes and dst in nodes and src != "logits" and dst != "input"
    assert any(e.endswith("->logits") for e in truth["edges"])


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_circuit_component_matters(name):
    """Zeroing any one node of the true circuit changes the answer on some prompt; zeroing every
    head outside it changes nothing."""
    model = load_model(name, device="cpu")
    truth = json.loads((ZOO_DIR / name / "circuit.json").read_text())
    texts = [r["prompt"] for r in records_of(name)]
    clean = end_logits(model, texts)

    def zero_heads(heads: list[int]):
        def edit(z: torch.Tensor) -> torch.Tensor:
            z = z.clone()
            z[:, :, heads] = 0
            return z
        return edit

    for node in truth["nodes"]:
        if node.startswith("a"):
            layer, head = (int(x) for x in node[1:].split(".h"))
            hooks = [(head_outputs(layer), zero_heads([head]))]
        else:
            hooks = [(mlp_out(int(node[1:])), lambda x: torch.zeros_like(x))]
        assert (end_logits(model, texts, hooks).argmax(-1) != clean.argmax(-1)).any(), node
    outside = [(head_outputs(l), zero_heads([h for h in range(model.n_heads) if [l, h] not in truth["heads"]]))
               for l in range(model.n_layers)]
    assert torch.equal(end_logits(model, texts, outside), clean)


def test_zoo_structure_has_what_benchmarks_need():
    """reverse: a head whose output depends only on the sequence length, and MLPs between two
    heads; detect-abc: two circuit heads in one layer."""
    model = load_model("tracr-reverse", device="cpu")
    truth = json.loads((ZOO_DIR / "tracr-reverse" / "circuit.json").read_text())
    same_length = [" ".join(p) for p in permutations("abcd", 4)] + ["a a a a", "d d c c"]
    length_only = []
    for l, h in truth["heads"]:
        outputs = []
        for texts in (same_length, ["a b", "c d"]):
            tokens, _ = encode(model, texts)
            _, cache = model.run_with_cache(tokens, [head_outputs(l)])
            outputs.append(cache[head_outputs(l)][:, 1:3, h])  # [batch, 2 positions, d_head]
        fixed = torch.allclose(outputs[0], outputs[0][:1].expand_as(outputs[0]), atol=1e-6)
        if fixed and not torch.allclose(outputs[0][0], outputs[1][0], atol=1e-3):
            length_only.append((l, h))
    assert length_only == [(0, 0)]  # the length head; the reverse head moves tokens
    layers = sorted({l for l, _ in truth["heads"]})
    assert any(layers[0] <= m < layers[-1] for m in truth["mlps"])
    detect = json.loads((ZOO_DIR / "tracr-detect-abc" / "circuit.json").read_text())
    per_layer = [sum(1 for l, _ in detect["heads"] if l == layer) for layer in range(detect["n_layers"])]
    assert max(per_layer) >= 2 and min(per_layer) == 0  # several heads in one layer, zero heads elsewhere


# --- compiling at test time (needs tracr, installed by the dev extra) ----------------------

def tracr_reference(program, vocab: set, max_seq_len: int, causal: bool):
    from tracr.compiler import compiling

    return compiling.compile_rasp_to_model(program, vocab=vocab, max_seq_len=max_seq_len, causal=causal,
                                           compiler_bos="BOS")


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_import_matches_tracr_forward(tmp_path, causal):
    """make_length (not shipped), imported by `import_tracr`, against tracr's own model.apply: the
    output-space values (read here from tracr's residual directions "length:<n>") and the
    decoded outputs at every position."""
    pytest.importorskip("tracr")
    from tracr.compiler import lib

    from circuitbench.models.tracr_import import ImportReport, import_tracr

    out = tmp_path / "length"
    report = import_tracr("length", ("a", "b"), 3, out, causal=causal, n_prompts=0)
    assert isinstance(report, ImportReport) and report.path == out and report.n_prompts == 0
    assert report.verification.max_abs_diff_output < 1e-4
    assert {"cfg.json", "model.safetensors", "tokenizer.json", "circuit.json", "tracr.json"} <= {
        p.name for p in out.iterdir()}
    record = json.loads((out / "tracr.json").read_text())
    assert record["causal"] == causal and record["verification"]["max_abs_diff_output"] < 1e-4
    reference = tracr_reference(lib.make_length(), {"a", "b"}, 3, causal)
    model = load_model(str(out), device="cpu")
    tok = model.vocab.tokenizer
    out_dirs = {int(label.split(":")[1]): i for i, label in enumerate(reference.residual_labels)
                if label.split(":")[0] == record["output_sop"]}
    worst = 0.0
    for seq in (["a"], ["b", "a"], ["a", "a", "b"], ["b", "b", "b"], ["a", "b"]):
        ref = reference.apply(["BOS", *seq])
        resid = np.asarray(ref.transformer_output)[0]  # [pos, d_model]
        logits = model.run(torch.tensor([[model.vocab.bos_id] + tok.encode(" ".join(seq), add_special_tokens=False)]))
        for value, dim in out_dirs.items():
            worst = max(worst, float(np.abs(logits[0, :, tok.convert_tokens_to_ids(str(value))].numpy()
                                            - resid[:, dim]).max()))
        assert decoded(model, seq) == [str(v) for v in ref.decoded[1:]]
        if not causal:
            assert decoded(model, seq) == [str(len(seq))] * len(seq)
    assert worst < 1e-4
    truth = json.loads((out / "circuit.json").read_text())
    assert truth["heads"] == [[0, 0]] and truth["mlps"] == [0]  # selector width: one head, one MLP
    assert report.circuit == truth


def test_import_of_a_program_file_with_an_mlp_only(tmp_path):
    """A program file whose program needs no attention: its one block's head is zero, so the true
    circuit is that block's MLP alone; padded batches give the unpadded answers."""
    pytest.importorskip("tracr")
    from circuitbench.models.tracr_import import import_tracr
    program = tmp_path / "prog.py"
    program.write_text("from tracr.rasp import rasp\n\n"
                       "def vowel(vocab):\n"
                       "    return rasp.categorical(rasp.Map(lambda x: 'y' if x in 'ae' else 'n', rasp.tokens))\n")
    out = tmp_path / "vowel"
    report = import_tracr(f"{program}:vowel", ("a", "b", "e", "f"), 4, out)
    truth = json.loads((out / "circuit.json").read_text())
    assert truth["heads"] == [] and truth["mlps"] == [0] and report.circuit == truth
    model = load_model(str(out), device="cpu")
    assert decoded(model, list("abef")) == ["y", "n", "y", "n"]
    tok = model.vocab.tokenizer
    short, long = ([model.vocab.bos_id] + tok.encode(s, add_special_tokens=False) for s in ("f a", "a b e f"))
    batch = model.run(torch.tensor([short + [model.vocab.pad_id] * 2, long]))
    assert torch.equal(batch[0, :3], model.run(torch.tensor([short]))[0])


def test_padding_is_invisible_to_a_bidirectional_model():
    """Right padding (how batches are built) changes nothing at the real positions of the zoo's
    bidirectional models, whose heads see every position."""
    model = load_model("tracr-reverse", device="cpu")
    tok = model.vocab.tokenizer
    short, long = ([model.vocab.bos_id] + tok.encode(s, add_special_tokens=False) for s in ("b c a", "d a b c d"))
    batch = model.run(torch.tensor([short + [model.vocab.pad_id] * 2, long]))
    assert torch.equal(batch[0, :4], model.run(torch.tensor([short]))[0])
    assert decoded(model, ["b", "c", "a"]) == ["a", "c", "b"]


@pytest.mark.parametrize("program,vocab,message", [
    ("frac_prevs", "a,b", "numerical"),
    ("revers", "a,b", "Did you mean 'reverse'"),
    ("no_such_module_xyz:f", "a,b", "cannot import module"),
    ("reverse", "a,,b", "--vocab"),
    ("reverse", "a,b,a", "twice"),
    ("reverse", "<pad>,a", "--vocab '<pad>': collides with the tokenizer's pad token"),
    ("reverse", "<unk>,a", "--vocab '<unk>': collides with the tokenizer's unknown-word token"),
    ("reverse", "compiler_pad,a", "--vocab 'compiler_pad': collides with tracr's compiler pad"),
    ("reverse", "a b,c", "--vocab value 'a b' is not one word"),
    ("reverse", "a.b,c", "splits it into ['a', '.', 'b']"),
    ("reverse", "-1,2", "splits it into ['-', '1']"),
])
def test_import_refuses_clearly(capsys, tmp_path, program, vocab, message):
    pytest.importorskip("tracr")
    code, _, stderr = cli(capsys, "import-tracr", program, "--vocab", vocab, "--max-seq-len", "3",
                          "--out", str(tmp_path / "m"))
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "m").exists()


def test_import_keeps_an_existing_dir(tmp_path):
    pytest.importorskip("tracr")
    from circuitbench.models.tracr_import import import_tracr

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "mine.txt").write_text("keep")
    with pytest.raises(CircuitbenchError, match="--force"):
        import_tracr("reverse", ("a", "b"), 3, tmp_path / "m")
    assert (tmp_path / "m" / "mine.txt").read_text() == "keep"


def test_registry_entries_match_their_checkpoints():
    tracr_models = {name: spec for name, spec in model_registry().items() if spec.source == "tl"}
    assert set(ZOO) <= set(tracr_models)
    for name, spec in tracr_models.items():
        model = load_model(name, device="cpu")
        assert (model.n_params, model.n_layers, model.n_heads, model.d_model, model.d_head, model.n_ctx,
                model.d_vocab) == (spec.n_params, spec.n_layers, spec.n_heads, spec.d_model, spec.d_head, spec.n_ctx,
                                   spec.d_vocab), name
        if name.startswith("planted-"):  # built by train-zoo, recorded in planted.json (tests/training/test_planted.py)
            continue
        record = json.loads((ZOO_DIR / spec.path / "tracr.json").read_text())
        assert spec.train_command == record["command"], name
        assert record["verification"]["max_abs_diff_output"] < 1e-4 and record["verification"]["n_positions_compared"]


def test_recorded_command_rebuilds_the_shipped_checkpoint(capsys, tmp_path):
    """tracr-hist (the quickest to compile) rebuilt from its registry command: identical weights,
    circuit and prompts."""
    pytest.importorskip("tracr")
    command = model_registry()["tracr-hist"].train_command
    assert command is not None
    args = command.split()[1:]
    args[args.index("DIR")] = str(tmp_path / "hist")
    code, _, stderr = cli(capsys, *args)
    assert code == 0, stderr
    for file in ("model.safetensors", "circuit.json", "prompts.jsonl", "cfg.json", "tokenizer.json"):
        assert (tmp_path / "hist" / file).read_bytes() == (ZOO_DIR / "tracr-hist" / file).read_bytes(), file


# --- issue 21: what --out and --force may replace, bounds before compute, vocab, umask -----------

def tree(root: Path) -> dict[str, str]:
    """Everything under `root`: relative path -> sha256 of a file's bytes, a link's target, or 'dir'."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


@pytest.fixture
def user_files(tmp_path, monkeypatch):
    """HOME = tmp/home; the working directory tmp/home/proj/work holds a user's files; removing
    anything outside tmp_path fails the test instead of happening (a safety net)."""
    home = tmp_path / "home"
    work = home / "proj" / "work"
    (work / "data").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    (work / "data" / "x.bin").write_bytes(bytes(range(256)))
    (home / "proj" / "README").write_text("the parent's file")
    (home / ".profile").write_text("a home file")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    real_rmtree = shutil.rmtree

    def guarded_rmtree(path, *args, **kwargs):
        assert Path(path).resolve().is_relative_to(tmp_path.resolve()), f"rmtree({path}) outside the test folder"
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", guarded_rmtree)
    return home


IMPORT_ARGS = ["import-tracr", "length", "--vocab", "a,b", "--max-seq-len", "2", "--n-prompts", "0"]


@pytest.mark.parametrize("where", [".", "..", "~", "HOME", "ANCESTOR", "LINK_TO_CWD", "/"],
                         ids=["cwd", "parent", "tilde", "home", "ancestor", "symlink-to-cwd", "slash"])
def test_import_force_never_replaces_cwd_home_or_their_ancestors(capsys, tmp_path, user_files, where):
    pytest.importorskip("tracr")
    link = tmp_path / "link"
    link.symlink_to(Path.cwd())
    out = {"HOME": str(user_files), "ANCESTOR": str(user_files / "proj"), "LINK_TO_CWD": str(link)}.get(where, where)
    before = tree(tmp_path)
    code, _, stderr = cli(capsys, *IMPORT_ARGS, "--out", out, "--force")
    assert code == 2 and "Traceback" not in stderr
    assert "never replaced, with or without --force" in stderr
    assert tree(tmp_path) == before


@pytest.mark.parametrize("extra", ["foreign", "import-plus-a-user-file"])
def test_import_force_refuses_a_folder_it_did_not_write(capsys, tmp_path, user_files, extra):
    pytest.importorskip("tracr")
    theirs = tmp_path / "theirs"
    if extra == "foreign":
        theirs.mkdir()
        (theirs / "thesis.tex").write_text("years of work")
        (theirs / "cfg.json").write_text("{}")
    else:
        shutil.copytree(ZOO_DIR / "tracr-hist", theirs)
        (theirs / "my_notes.md").write_text("mine")
    before = tree(tmp_path)
    code, _, stderr = cli(capsys, *IMPORT_ARGS, "--out", str(theirs), "--force")
    assert code == 2 and "not replaced, even with --force" in stderr and "Traceback" not in stderr
    assert ("no tracr.json" if extra == "foreign" else "my_notes.md") in stderr
    assert tree(tmp_path) == before


def test_import_force_replaces_its_own_earlier_output(capsys, tmp_path, user_files):
    """A folder an import wrote (a copy of the shipped tracr-hist) is replaced as a whole; its
    neighbours are not touched and no staging or trash folder is left."""
    pytest.importorskip("tracr")
    project = tmp_path / "project"
    shutil.copytree(ZOO_DIR / "tracr-hist", project / "model")
    (project / "neighbour.txt").write_text("keep")
    neighbours = {k: v for k, v in tree(project).items() if not k.startswith("model")}
    code, _, stderr = cli(capsys, *IMPORT_ARGS, "--out", str(project / "model"), "--force")
    assert code == 0, stderr
    record = json.loads((project / "model" / "tracr.json").read_text())
    assert record["program"] == "length" and record["vocab"] == ["a", "b"]
    assert not (project / "model" / "prompts.jsonl").exists()  # the old folder's file went with it
    assert {k: v for k, v in tree(project).items() if not k.startswith("model")} == neighbours
    assert sorted(p.name for p in project.iterdir()) == ["model", "neighbour.txt"]


def test_a_failed_import_keeps_the_old_output_and_leaves_no_staging(tmp_path, user_files, monkeypatch):
    pytest.importorskip("tracr")
    from tracr.compiler import compiling

    from circuitbench.models.tracr_import import import_tracr

    def broken(*args, **kwargs):
        raise RuntimeError("the compiler broke")

    monkeypatch.setattr(compiling, "compile_rasp_to_model", broken)
    shutil.copytree(ZOO_DIR / "tracr-hist", tmp_path / "model")
    before = tree(tmp_path)
    with pytest.raises(RuntimeError, match="the compiler broke"):
        import_tracr("length", ("a", "b"), 2, tmp_path / "model", force=True, n_prompts=0)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_import_folder_and_files_honour_the_umask(capsys, tmp_path, umask):
    pytest.importorskip("tracr")
    old = os.umask(umask)
    try:
        code, _, stderr = cli(capsys, *IMPORT_ARGS, "--out", str(tmp_path / "m"))
    finally:
        os.umask(old)
    assert code == 0, stderr
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o777 & ~umask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert modes and set(modes.values()) == {0o666 & ~umask}, modes


def _cli_subprocess(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """The CLI in a child process, killed after `timeout` s (a run that would compute for hours fails
    the test instead of hanging it)."""
    return subprocess.run([sys.executable, "-m", "circuitbench.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("max_seq_len", ["200", "1000000000"])
def test_import_refuses_a_compile_too_large_before_compiling(tmp_path, max_seq_len):
    """reverse at max_seq_len 200 compiled for 9+ minutes up to 13.7 GB (its MLP is max_seq_len² wide
    and tracr's cost grows with the cube of that): refused at once, with the estimate."""
    pytest.importorskip("tracr")
    proc = _cli_subprocess("import-tracr", "reverse", "--vocab", "a,b,c", "--max-seq-len", max_seq_len,
                           "--out", str(tmp_path / "m"), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "too large to compile here" in proc.stderr and "widest MLP layer" in proc.stderr
    if max_seq_len == "200":
        assert "40,200 units" in proc.stderr  # (--allow-large is offered only where the memory is free)
        assert re.search(r"smaller --max-seq-len \(at most \d+ here\)", proc.stderr)
    assert not (tmp_path / "m").exists() and list(tmp_path.iterdir()) == []


def test_import_bounds_n_prompts(tmp_path):
    pytest.importorskip("tracr")
    proc = _cli_subprocess("import-tracr", "hist", "--vocab", "a,b", "--max-seq-len", "2", "--n-prompts",
                           "1000000000", "--out", str(tmp_path / "m"), timeout=120)
    assert proc.returncode == 2 and "--n-prompts 1000000000: give 0 to 10,000" in proc.stderr, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_import_stops_when_the_inputs_run_out(tmp_path):
    """hist over a,b up to length 2 has 6 distinct inputs: asking for 1,000 prompts takes each once
    (4 have a same-length input with another answer) and says so."""
    pytest.importorskip("tracr")
    from circuitbench.models.tracr_import import import_tracr

    report = import_tracr("hist", ("a", "b"), 2, tmp_path / "m", n_prompts=1000)
    assert report.n_prompts == 4 and report.n_distinct_inputs == 6
    records = [json.loads(line) for line in (tmp_path / "m" / "prompts.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in records) == ["a a", "a b", "b a", "b b"]
    assert "4 prompts in prompts.jsonl (of 1000 asked: only 6 distinct inputs of length 1-2 exist" in report.summary(
        1000, 2)


def test_the_reproducing_command_leaves_default_options_out():
    from circuitbench.models.tracr_import import reproduce_command

    assert reproduce_command("hist", "a,b,c", 5) == (
        "circuitbench import-tracr hist --vocab a,b,c --max-seq-len 5 --out DIR")
    assert reproduce_command("make_hist", "1, 2", 4, causal=True, bos="B", n_prompts=8) == (
        "circuitbench import-tracr make_hist --vocab 1, 2 --max-seq-len 4 --causal --bos B --n-prompts 8 --out DIR")
