"""Every bad invocation of the table in bad_inputs.py: exit code 2, one message naming what is
wrong, no traceback, and nothing written where a result would go."""
from __future__ import annotations

import pytest
from bad_inputs import CASES, build_files

from helpers import cli


@pytest.fixture(scope="module")
def case_root(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("bad_inputs")
    build_files(root, tiny_models["gpt2"])
    return root


def test_the_table_is_large_and_ids_are_unique():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id, args, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(capsys, case_root, case_id, args, expected):
    code, out, err = cli(capsys, *(a.replace("{tmp}", str(case_root)) for a in args))
    assert code == 2, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err
    assert expected in out + err, err[-2000:]
