"""tables/listings.py and the `ls` rendering: a description's first sentence ends where the
sentence ends (never inside quotes or brackets), and `ls tasks` on an 80-column terminal shows
every task name whole."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from circuitbench.specs.catalog import all_tasks
from circuitbench.tables.listings import first_sentence


@pytest.mark.parametrize(("text", "first"), [
    ('Say "Hi. There" now. Next one.', 'Say "Hi. There" now.'),  # a period inside quotes
    ("A list (b. C d) here. Then more.", "A list (b. C d) here."),  # inside brackets
    ("Values 1..99, shown. Next.", "Values 1..99, shown."),  # a range is no sentence end
    ("For example e.g. lower case. Next.", "For example e.g. lower case."),  # no capital after
    ("Why? Because.", "Why?"),
    ("No period at the end", "No period at the end."),
    ("  spread\n over   lines.  Second.", "spread over lines."),
    ("", ""),
])
def test_first_sentence_of_tricky_texts(text, first):
    assert first_sentence(text) == first


def test_first_sentence_of_every_shipped_task():
    for name, spec in all_tasks(()).items():
        whole = " ".join(spec.description.split())
        first = first_sentence(spec.description)
        assert whole.startswith(first.rstrip(".")), name  # a prefix of the description
        assert first.count('"') % 2 == 0 and first.count("(") == first.count(")"), (name, first)
        rest = whole[len(first):]
        assert rest == "" or (rest.startswith(" ") and rest[1].isupper()), (name, rest[:30])
    sentence = first_sentence(all_tasks(())["seq_sentence"].description)
    # the example prompt holds two periods, each followed by a capital, inside its quotes
    assert '"Anne was born in one. Anne was born in two. Anne was born in" -> " three")' in sentence
    assert sentence.endswith("number words.")


def test_ls_tasks_at_80_columns_shows_every_name_whole(tmp_path):
    env = {**os.environ, "COLUMNS": "80", "LINES": "50", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "circuitbench", "ls", "tasks"], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "…" not in done.stdout
    first_cells = [line.split()[0] for line in lines if line.strip() and not line.startswith(" ")]
    for name, spec in all_tasks(()).items():
        assert name in first_cells, name  # whole, at the start of its row
        row = next(line for line in lines if line.startswith(name + " "))
        assert re.search(rf"\s{re.escape(spec.generator.name)}\s", row), (name, row)  # the generator whole too
