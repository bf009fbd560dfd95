"""Every bad invocation of the table in bad_inputs.py, each checked for the same behaviour: exit
code 2, one message naming what is wrong (the case's expected text), no traceback, and nothing
written or changed anywhere (the case files, the working directory) except, for `run`, the record
of the failed unit (a RunResult with status "failed", which --resume retries)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_inputs import CASES, build_files

from helpers import cli


@pytest.fixture(scope="module")
def case_root(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("bad_inputs")
    build_files(root, tiny_models["gpt2"])
    return root


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root (symlinks not followed) -> (size, mtime in ns)."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            stat = path.stat()
            out[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return out


def is_failed_unit_record(path: Path) -> bool:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("status") == "failed" and "schema_version" in raw


@pytest.mark.parametrize("case_id, args, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(capsys, monkeypatch, tmp_path, case_root, case_id, args,
                                                          expected):
    monkeypatch.chdir(tmp_path)  # a command that wrote into the working directory would show here
    before = tree(case_root)
    code, out, err = cli(capsys, *(a.replace("{tmp}", str(case_root)) for a in args))
    assert code == 2, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err
    assert expected in out + err, err[-2000:]
    assert (out + err).count("error:") <= 1 and (out + err).count("Error:") <= 1, "more than one message"
    after = tree(case_root)
    changed = sorted(p for p in after if before.get(p) != after[p])
    removed = sorted(set(before) - set(after))
    assert not removed, f"{case_id} removed {removed}"
    assert all(args[0] == "run" and is_failed_unit_record(case_root / p) for p in changed), \
        f"{case_id} wrote {changed}"
    assert not any(tmp_path.iterdir()), f"{case_id} wrote into the working directory: {list(tmp_path.iterdir())}"


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})
