"""The path policy (circuitbench/output_paths.py) and every command that writes: nothing outside
what the command writes changes on disk (the tree hashed before and after), its own input, a
committed file, a shipped checkpoint or a file it did not write is never replaced without --force,
names from data never lead outside --out, and a computed result is never lost."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from circuitbench import output_paths
from circuitbench.errors import CircuitbenchError
from circuitbench.models.toy import ZOO_DIR
from circuitbench.output_paths import inside, path_component, staged_output

from helpers import cli

REPO = Path(__file__).resolve().parent.parent
LEADERBOARDS = REPO / "leaderboards"


def tree(root: Path) -> dict[str, str]:
    """Every file under root (symlinks as their target) → sha256 of its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


@pytest.fixture(scope="module")
def result_file(tmp_path_factory) -> Path:
    """One real result (induction on the shipped toy), copied into each test's world."""
    out = tmp_path_factory.mktemp("result")
    code = subprocess.run([sys.executable, "-m", "circuitbench", "run", "--task", "induction", "--model",
                           "toy-induction-2l", "--n", "4", "--methods", "induction", "--out", str(out), "-q",
                           "--no-cache"], capture_output=True, text=True)
    assert code.returncode == 0, code.stderr[-2000:]
    return out / "toy-induction-2l" / "induction.json"


@pytest.fixture(scope="module")
def scored_result(tmp_path_factory) -> Path:
    """A result scored against a reference circuit (what `recovery` reads)."""
    out = tmp_path_factory.mktemp("scored")
    (out / "ref.json").write_text('{"heads": [[1, 1], [1, 2]]}')
    code = subprocess.run([sys.executable, "-m", "circuitbench", "run", "--task", "induction", "--model",
                           "toy-induction-2l", "--n", "4", "--methods", "induction", "--out", str(out), "-q",
                           "--no-cache", "--reference", str(out / "ref.json")], capture_output=True, text=True)
    assert code.returncode == 0, code.stderr[-2000:]
    return out / "toy-induction-2l" / "induction.json"


@pytest.fixture
def world(tmp_path, result_file, scored_result, monkeypatch) -> Path:
    """A working directory with a user's own files and one result under r/."""
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\nnot ours")
    (tmp_path / "paper" / "table.md").write_text("| my | table |\n")
    (tmp_path / "graph.json").write_text(json.dumps({"cfg": {}, "nodes": {}, "edges": {}}))
    (tmp_path / "r" / "toy-induction-2l").mkdir(parents=True)
    shutil.copy(result_file, tmp_path / "r" / "toy-induction-2l" / "induction.json")
    shutil.copy(scored_result, tmp_path / "scored.json")
    (tmp_path / "a.json").write_text('{"heads": [[0, 1], [1, 2]], "n_layers": 2, "n_heads": 4}\n')
    (tmp_path / "b.json").write_text('{"heads": [[0, 1], [1, 3]], "n_layers": 2, "n_heads": 4}\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


RESULT = "r/toy-induction-2l/induction.json"


# ---- the policy's building blocks ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["", ".", "..", "../../ESCAPED", "a/b", "a\\b", "x" * 250])
def test_names_from_data_that_cannot_be_one_file_name_are_refused(name):
    with pytest.raises(CircuitbenchError):
        path_component(name, "task name")


def test_inside_refuses_a_symlinked_folder_that_leads_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "model").symlink_to(tmp_path / "elsewhere")
    assert inside(tmp_path / "out", "m", "t.json", what="result") == tmp_path / "out" / "m" / "t.json"
    with pytest.raises(CircuitbenchError, match="outside"):
        inside(tmp_path / "out", "model", "t.json", what="result")


def test_staged_output_replaces_all_files_or_none(tmp_path):
    (tmp_path / "a.md").write_text("old a")
    (tmp_path / "b.md").write_text("old b")
    with pytest.raises(OSError):
        with staged_output(tmp_path) as staging:
            (staging / "a.md").write_text("new a")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (tmp_path / "a.md").read_text() == "old a" and sorted(tree(tmp_path)) == ["a.md", "b.md"]
    with staged_output(tmp_path) as staging:
        (staging / "a.md").write_text("new a")
        (staging / "sub").mkdir()
        (staging / "sub" / "c.md").write_text("c")
    assert sorted(tree(tmp_path)) == ["a.md", "b.md", "sub/c.md"]
    assert (tmp_path / "a.md").read_text() == "new a" and not list(tmp_path.glob(".staging-*"))


# ---- every writing command changes exactly what it writes ---------------------------------------

WRITERS = [
    # (command, the paths it may create or change, as prefixes relative to the world)
    (["report", RESULT], {"r/toy-induction-2l/induction_report/"}),
    (["report", RESULT, "--out", "rep"], {"rep/"}),
    (["leaderboard", "--results", "r", "--out", "lb"], {"lb/"}),
    (["overlap", "a.json", "b.json", "--metric", "jaccard", "--plot", "o.png"], {"o.png"}),
    (["circuit", "export", RESULT, "--out", "g.json"], {"g.json"}),
    (["schema", "--out", "s.json"], {"s.json"}),
    (["recovery", "scored.json", "--markdown", "rec.md"], {"rec.md"}),
    (["train-zoo", "toy-induction-2l", "--out", "z", "--steps", "2"], {"z/"}),
    (["run", "--task", "induction", "--model", "toy-induction-2l", "--n", "4", "--methods", "induction", "--out",
      "r2", "-q", "--cache-dir", "cache"], {"r2/", "cache/"}),
]


@pytest.mark.parametrize("args, allowed", WRITERS, ids=[" ".join(a[:2]) for a, _ in WRITERS])
def test_a_command_changes_nothing_but_its_output(capsys, world, args, allowed):
    before = tree(world)
    code, out, err = cli(capsys, *args)
    assert code == 0, err[-2000:]
    diff = changed(before, tree(world))
    assert diff, "the command wrote nothing"
    assert {p for p in diff if not any(p == a or p.startswith(a) for a in allowed)} == set()
    # run again: its own output is recognised and replaced, nothing else touched
    again = tree(world)
    code, _, err = cli(capsys, *args)
    assert code == 0, err[-2000:]
    assert {p for p in changed(again, tree(world)) if not any(p.startswith(a) for a in allowed)} == set()


def test_train_and_dynamics_change_nothing_but_their_folder(capsys, world):
    before = tree(world)
    code, _, err = cli(capsys, "train", "--task", "induction", "--arch", "attn-only-1l", "--d-model", "16", "--heads",
                       "2", "--steps", "4", "--checkpoints", "2", "--batch-size", "4", "--out", "t")
    assert code == 0, err[-2000:]
    code, _, err = cli(capsys, "dynamics", "--model", "t", "--n", "4")
    assert code == 0, err[-2000:]
    assert {p for p in changed(before, tree(world)) if not p.startswith("t/")} == set()
    assert (world / "t" / "dynamics_induction.png").is_file()
    # a folder of someone else's files is refused, unchanged
    before = tree(world)
    code, _, err = cli(capsys, "train", "--task", "induction", "--steps", "2", "--out", "paper")
    assert code == 2 and "--force" in err
    assert tree(world) == before


# ---- what is never replaced without --force -------------------------------------------------------

REFUSED = [
    ("export-onto-its-input", ["circuit", "export", RESULT, "--out", RESULT], "input"),
    ("export-onto-a-foreign-graph", ["circuit", "export", RESULT, "--out", "graph.json"], "--force"),
    ("recovery-onto-its-input", ["recovery", RESULT, "--markdown", RESULT], "input"),
    ("recovery-onto-a-users-file", ["recovery", RESULT, "--markdown", "paper/table.md"], "--force"),
    ("schema-onto-a-users-file", ["schema", "--out", "notes.txt"], "--force"),
    ("overlap-plot-onto-a-users-png", ["overlap", "a.json", "b.json", "--plot", "paper/figure.png"], "--force"),
    ("overlap-plot-markdown", ["overlap", "a.json", "b.json", "--plot", "x.md"], ".png"),
    ("overlap-plot-onto-its-input", ["overlap", "a.json", "b.json", "--plot", "a.json"], "input"),
    ("leaderboard-into-a-users-folder", ["leaderboard", "--results", "r", "--out", "paper"], "--force"),
    ("report-into-a-users-folder", ["report", RESULT, "--out", "paper"], "--force"),
    ("dynamics-plot-onto-a-users-png", ["dynamics", "--model", "t", "--plot", "paper/figure.png"], "--force"),
]


@pytest.mark.parametrize("case, args, expected", REFUSED, ids=[c for c, _, _ in REFUSED])
def test_never_replaced_without_force(capsys, world, case, args, expected):
    before = tree(world)
    code, out, err = cli(capsys, *args)
    assert code == 2, (out[-1000:], err[-1000:])
    assert expected in err and "Traceback" not in out + err
    assert tree(world) == before


@pytest.mark.parametrize("args", [
    ["schema", "--out", str(LEADERBOARDS / "README.md")],
    ["recovery", RESULT, "--markdown", str(LEADERBOARDS / "index.html")],
    ["circuit", "export", RESULT, "--out", str(ZOO_DIR / "tracr-reverse" / "circuit.json")],
    ["train", "--task", "induction", "--steps", "2", "--out", str(ZOO_DIR / "toy-induction-2l")],
], ids=["schema-committed-table", "recovery-committed-page", "export-shipped-truth", "train-shipped-weights"])
def test_committed_tables_and_shipped_models_are_kept(capsys, world, args):
    target = Path(args[args.index("--out" if "--out" in args else "--markdown") + 1])
    folder = target if target.is_dir() else target.parent
    before = tree(folder)
    code, _, err = cli(capsys, *args)
    assert code == 2 and "--force" in err, err[-1000:]
    assert tree(folder) == before


def test_force_replaces_a_users_file_when_asked(capsys, world):
    code, _, err = cli(capsys, "schema", "--out", "notes.txt", "--force")
    assert code == 0, err
    assert json.loads((world / "notes.txt").read_text())["title"] == "RunResult"


# ---- names from data, symlinks --------------------------------------------------------------------

def test_a_task_name_from_a_result_never_leads_outside_out(capsys, world):
    raw = json.loads((world / RESULT).read_text())
    raw["task"]["name"] = "../../ESCAPED"
    (world / "r" / "toy-induction-2l" / "escaped.json").write_text(json.dumps(raw))
    (world / "deep" / "er").mkdir(parents=True)
    before = tree(world)
    code, _, err = cli(capsys, "leaderboard", "--results", "r", "--out", "deep/er/lb")
    assert code in (0, 2) and "Traceback" not in err
    assert not [p for p in world.parent.rglob("ESCAPED*")]
    assert {p for p in changed(before, tree(world)) if not p.startswith("deep/er/lb/")} == set()


def test_model_dot_dot_names_its_folder(capsys, world):
    shutil.copytree(ZOO_DIR / "toy-induction-2l", world / "mytoy")
    (world / "mytoy" / "sub").mkdir()
    os.chdir(world / "mytoy" / "sub")
    code, _, err = cli(capsys, "run", "--task", "induction", "--model", "..", "--n", "4", "--methods", "induction",
                       "--out", str(world / "out"), "-q", "--no-cache")
    assert code == 0, err[-2000:]
    assert (world / "out" / "mytoy" / "induction.json").is_file()
    assert not (world / "induction.json").exists()


def test_leaderboard_out_a_symlink_loop_is_one_clear_error(capsys, world):
    (world / "loop").symlink_to("loop")
    code, out, err = cli(capsys, "leaderboard", "--results", "r", "--out", "loop")
    assert code == 2 and "loop" in err and "Traceback" not in out + err


def test_a_task_name_too_long_for_a_file_name_is_refused_before_compute(capsys, world):
    name = "t" * 240
    (world / f"{name}.yaml").write_text(f"name: {name}\ngenerator: {{name: induction}}\nmetrics: [induction_loss]\n"
                                        "methods: [induction]\n")
    code, _, err = cli(capsys, "run", "--task", f"{name}.yaml", "--model", "toy-induction-2l", "--n", "4", "--out",
                       "r3", "-q", "--no-cache")
    assert code == 2 and "shorter name" in err, err[-1000:]
    assert not (world / "r3" / "toy-induction-2l").exists()


# ---- a computed result is never lost ---------------------------------------------------------------

def test_a_result_that_cannot_be_written_goes_to_the_fallback(capsys, world, monkeypatch):
    from circuitbench.pipeline import grid
    from circuitbench.results.store import load_result

    real = grid.save_result

    def disk_full_under_out(result, path):
        if (world / "r4") in Path(path).resolve().parents:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(result, path)

    monkeypatch.setattr(grid, "save_result", disk_full_under_out)
    monkeypatch.setenv("CIRCUITBENCH_UNSAVED", str(world / "unsaved"))
    code, _, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "4", "--methods",
                       "induction", "--out", "r4", "-q", "--no-cache")
    assert code == 2 and "No space left" in err
    kept = list((world / "unsaved").rglob("induction.json"))
    assert len(kept) == 1 and str(kept[0].parent.name) in " ".join(err.split())
    assert load_result(kept[0]).status == "complete"


def test_an_unusable_fallback_or_file_size_limit_is_refused_before_compute(capsys, world, monkeypatch):
    (world / "ro").write_text("a file, not a folder")
    monkeypatch.setenv("CIRCUITBENCH_UNSAVED", str(world / "ro" / "x"))
    code, _, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "4", "--out", "r5",
                       "-q", "--no-cache")
    assert code == 2 and "CIRCUITBENCH_UNSAVED" in err
    assert not (world / "r5" / "toy-induction-2l").exists()
    monkeypatch.delenv("CIRCUITBENCH_UNSAVED")
    limited = subprocess.run(
        ["bash", "-c", f"ulimit -f 64; exec {sys.executable} -m circuitbench run --task induction --model "
                       "toy-induction-2l --n 4 --out r6 -q --no-cache"], capture_output=True, text=True, cwd=world)
    assert limited.returncode == 2 and "ulimit -f" in limited.stderr, limited.stderr[-1000:]
    assert "Traceback" not in limited.stderr and not (world / "r6" / "toy-induction-2l").exists()


def test_a_leaderboard_that_cannot_be_written_whole_leaves_the_old_one(capsys, world, monkeypatch):
    assert cli(capsys, "leaderboard", "--results", "r", "--out", "lb")[0] == 0
    before = tree(world / "lb")
    from circuitbench.tables import leaderboard

    calls = {"n": 0}
    real = leaderboard.write_atomic

    def fails_third(path, text):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.EFBIG, "File too large")
        real(path, text)

    monkeypatch.setattr(leaderboard, "write_atomic", fails_third)
    code, out, err = cli(capsys, "leaderboard", "--results", "r", "--out", "lb", "--title", "another title")
    assert code == 2 and "File too large" in err and "unchanged" in err
    assert tree(world / "lb") == before and not list((world / "lb").glob(".staging-*"))


def test_a_file_at_a_result_path_that_is_no_result_is_never_replaced(capsys, world):
    mine = world / "r7" / "toy-induction-2l" / "induction.json"
    mine.parent.mkdir(parents=True)
    mine.write_text('{"my": "own data"}\n')
    code, _, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "4", "--methods",
                       "induction", "--out", "r7", "-q", "--no-cache")
    assert code == 2 and "not a result circuitbench wrote" in err
    assert mine.read_text() == '{"my": "own data"}\n'


def test_cache_clear_deletes_only_cache_entries(capsys, world):
    code, _, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "4", "--methods",
                       "induction", "--out", "r8", "-q", "--cache-dir", "cache")
    assert code == 0, err[-1000:]
    (world / "cache" / "v1" / "photos").mkdir()
    (world / "cache" / "v1" / "photos" / "a.jpg").write_bytes(b"jpeg")
    (world / "cache" / "v1" / "0123456789abcdef01234567").mkdir()  # digest-shaped, but someone else's files
    (world / "cache" / "v1" / "0123456789abcdef01234567" / "thesis.tex").write_text("mine")
    before = tree(world)
    code, out, err = cli(capsys, "cache", "clear", "--cache-dir", "cache")
    assert code == 0, err
    gone = changed(before, tree(world))
    assert gone and all(p.startswith("cache/v1/") and p.endswith((".safetensors", "manifest.json", ".lock"))
                        for p in gone), gone
    assert (world / "cache" / "v1" / "photos" / "a.jpg").is_file()
    assert (world / "cache" / "v1" / "0123456789abcdef01234567" / "thesis.tex").read_text() == "mine"


# --- replace_dir_staged: a whole folder replaced only when complete (import-tracr --force; issue 21) ----


def _own(folder: Path) -> str | None:
    """The test's notion of its own output: a folder holding OURS and nothing else."""
    return None if sorted(p.name for p in folder.iterdir()) == ["OURS"] else "not ours"


def _write(text: str):
    def build(staging: Path) -> str:
        (staging / "OURS").write_text(text)
        return text
    return build


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def cwd_with_files(tmp_path, monkeypatch):
    home = tmp_path / "home"
    work = home / "proj" / "work"
    work.mkdir(parents=True)
    (work / "mine.txt").write_text("mine")
    (home / "proj" / "theirs.txt").write_text("theirs")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.mark.parametrize("where", [".", "..", "~", "HOME", "ANCESTOR", "LINK", "/"])
def test_replace_dir_staged_never_touches_cwd_home_root_or_their_ancestors(tmp_path, cwd_with_files, where):
    (tmp_path / "link").symlink_to(Path.cwd())
    target = {"HOME": cwd_with_files, "ANCESTOR": cwd_with_files / "proj", "LINK": tmp_path / "link"}.get(
        where, Path(where))
    before = _snapshot(tmp_path)
    built = []
    with pytest.raises(CircuitbenchError, match="never replaced, with or without --force"):
        output_paths.replace_dir_staged(target, lambda staging: built.append(staging), lambda folder: None, "--out",
                                 force=True, what="ours")
    assert built == [] and _snapshot(tmp_path) == before


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_replace_dir_staged_makes_the_folder_with_the_umask_and_leaves_nothing_else(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert output_paths.replace_dir_staged(tmp_path / "out", _write("new"), _own, "--out", force=False,
                                        what="ours") == "new"
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "OURS").read_text() == "new"
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask


def test_replace_dir_staged_replaces_only_its_own_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "OURS").write_text("old")
    with pytest.raises(CircuitbenchError, match="pass --force"):
        output_paths.replace_dir_staged(tmp_path / "out", _write("new"), _own, "--out", force=False, what="ours")
    output_paths.replace_dir_staged(tmp_path / "out", _write("new"), _own, "--out", force=True, what="ours")
    assert (tmp_path / "out" / "OURS").read_text() == "new"
    (tmp_path / "out" / "notes.txt").write_text("a user's file")
    before = _snapshot(tmp_path)
    with pytest.raises(CircuitbenchError, match=r"not replaced, even with --force: it is not ours \(not ours\)"):
        output_paths.replace_dir_staged(tmp_path / "out", _write("newer"), _own, "--out", force=True, what="ours")
    assert _snapshot(tmp_path) == before


def test_replace_dir_staged_puts_the_old_folder_back_when_the_rename_fails(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "OURS").write_text("old")
    before = _snapshot(tmp_path)
    real_rename = os.rename

    def failing_rename(src, dst):
        if str(src).endswith(".staging"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(output_paths.os, "rename", failing_rename)
    with pytest.raises(CircuitbenchError, match="could not move the new folder into place"):
        output_paths.replace_dir_staged(tmp_path / "out", _write("new"), _own, "--out", force=True, what="ours")
    assert _snapshot(tmp_path) == before  # the old folder is back, no staging or trash folder left


def test_replace_dir_staged_failed_build_leaves_no_folder_behind(tmp_path):
    def broken(staging: Path) -> None:
        (staging / "half").write_text("half written")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        output_paths.replace_dir_staged(tmp_path / "new" / "deeper" / "out", broken, _own, "--out", force=False,
                                 what="ours")
    assert list(tmp_path.iterdir()) == []


# ---- file modes: every file a command writes follows the umask ------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_files_are_written_with_the_umask(capsys, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        code, _, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "4", "--out",
                           str(tmp_path / "r"), "-q", "--methods", "induction")
        assert code == 0, err
        result = tmp_path / "r" / "toy-induction-2l" / "induction.json"
        assert cli(capsys, "leaderboard", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "lb"))[0] == 0
        assert cli(capsys, "report", str(result), "--out", str(tmp_path / "rep"))[0] == 0
    finally:
        os.umask(old)
    trees = [*(tmp_path / "lb").rglob("*"), *(tmp_path / "rep").rglob("*")]  # the leaderboard's reports/ too
    written = [result, *(p for p in trees if p.is_file())]
    assert len(written) >= 8
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in written} == {str(p): oct(mode) for p in written}
    folders = [p for p in trees if p.is_dir()]  # and its folders as mkdir makes them: 0o777 less the umask
    assert folders and {oct(p.stat().st_mode & 0o777) for p in folders} == {oct(0o777 & ~umask)}
