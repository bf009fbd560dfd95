"""circuitbench/files.py: file arguments (globs); atomic writes are tested in tests/test_cli.py and
tests/test_output_paths.py."""
from __future__ import annotations

from circuitbench.files import expand_glob


def test_expand_glob_sorted_matches_or_the_path_as_given(tmp_path):
    for name in ("b.json", "a.json", "c.txt"):
        (tmp_path / name).write_text("{}")
    assert expand_glob(str(tmp_path / "*.json")) == [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert expand_glob(str(tmp_path / "*.csv")) == []
    assert expand_glob("no_glob_characters.json") == ["no_glob_characters.json"]  # missing: named later, as given
    literal = tmp_path / "run[1].json"  # a file whose name looks like a glob is the file
    literal.write_text("{}")
    assert expand_glob(str(literal)) == [str(literal)]
