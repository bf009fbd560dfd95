"""Every command shown in README.md and in the documentation site (docs/, in mkdocs.yml's nav
order) is run here, in that order, in one scratch directory (`make docs-check`; part of `make
test`), so the examples cannot rot. A console block's output lines (those after a `$ ` command)
must appear in what the command prints. The site itself builds with warnings as errors.

Commands that need the Hugging Face hub, or that are too heavy for the suite, are in SKIPPED with
their reason, and the test asserts that list explicitly; a few long ones run with fewer steps or
prompts (SMALLER)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from helpers import cli  # the in-process CLI runner

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MKDOCS = ROOT / "mkdocs.yml"
SHELL_LANGS = ("", "console", "bash", "sh", "shell")
PROGRAMS = ("circuitbench", "make", "torchrun", "accelerate", "OMP_NUM_THREADS=1", "cat")

HUB = "needs the Hugging Face hub (pretrained weights)"
TRACR = ("compiles a RASP program with tracr/jax (about a minute); tests/pipeline/test_known_answers.py runs this "
         "import → file task → run flow on count_less_freq")
SKIPPED: dict[str, str] = {
    "circuitbench run --task ioi,seq_months --model gpt2-small": HUB,
    "circuitbench overlap results/gpt2-small/ioi.json results/gpt2-small/seq_months.json":
        HUB + ": reads the results of the command before it",
    "circuitbench leaderboard --results results": "the README's first lines, before any result exists here; "
                                                 "the quickstart's leaderboard commands run below",
    "make demo": "the demo itself (minutes, a fresh venv): timed by hand, figure in docs/guide/cli.md",
    "make test": "the test suite itself, which runs this file",
    "circuitbench run --task ioi,fibonacci --model gpt2-small,gpt-neo-125M --n-prompts 64": HUB,
    "torchrun --nproc_per_node 4 -m circuitbench run --task ioi --model gpt2-small --n-prompts 256": HUB,
    "accelerate launch --multi_gpu --num_processes 4 -m circuitbench run --task ioi --model gpt2-small --n 256":
        HUB + "; 4 GPUs",
    "OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m circuitbench run --task induction --model "
    "toy-induction-2l --n-prompts 16 --out runs/dp":
        "launches two processes (about a minute on 2 cores); tests/pipeline/test_scale.py runs torchrun on the toy",
    "circuitbench import-tracr reverse --vocab a,b,c,d --max-seq-len 5 --out models/tracr-reverse": TRACR,
    "circuitbench import-tracr sort_unique --vocab 1,2,3,4,5,6,7,8 --max-seq-len 4 --out models/tracr-sort-unique":
        TRACR,
    "circuitbench import-tracr count_less_freq --vocab a,b,c --max-seq-len 4 --out models/count": TRACR,
    "cat > count.yaml <<'YAML'": TRACR,
    "circuitbench run --task count.yaml --model models/count": TRACR,
    "circuitbench run --task ioi,seq_months,seq_digits --model toy-tasks --n-prompts 8 --executor ray --out runs/ray":
        "starts a Ray cluster (about 20 s); tests/pipeline/test_executors.py runs a 3-unit grid on one and compares it "
        "with the local run",
}
# Long commands run with these arguments appended (later flags win): same code path, fewer steps.
SMALLER: dict[str, list[str]] = {
    "circuitbench train-zoo toy-induction-2l --out runs/toy-induction-2l": ["--steps", "20"],
    "circuitbench train --task x2,arith_k,fibonacci --arch gpt-2l --steps 3000 --checkpoints 12 --out runs/arith":
        ["--steps", "30", "--checkpoints", "3"],
    "circuitbench train --task induction --arch attn-only-2l --d-model 32 --heads 2 --positional rotary "
    "--loss-positions answer --steps 600 --checkpoints 12 --batch-size 32 --lr 5e-3 --out runs/ind":
        ["--steps", "60", "--checkpoints", "3"],
    "circuitbench run --task tasks/examples/fibonacci_long.yaml --model gpt2-small --init random --methods "
    "previous_token": ["--n", "4"],
}


@dataclass
class Command:
    text: str  # as in the document (continuations joined, comment dropped)
    kind: str  # shell | python | heredoc
    expected: list[str] = field(default_factory=list)  # console output lines the command must print


def _nav_pages(entry) -> list[str]:
    """The page files of a mkdocs nav entry, depth first, in order."""
    if isinstance(entry, str):
        return [entry]
    if isinstance(entry, list):
        return [page for item in entry for page in _nav_pages(item)]
    return [page for value in entry.values() for page in _nav_pages(value)]


def documents() -> list[Path]:
    """README.md, then the site's pages in nav order (a reader's order: later pages may use what
    earlier ones wrote)."""
    config = yaml.safe_load(MKDOCS.read_text())
    return [README] + [ROOT / config["docs_dir"] / page for page in _nav_pages(config["nav"])]


def _blocks() -> list[tuple[str, str]]:
    """Fenced code blocks (language, body) of every document; indented fences (inside lists) too."""
    out = []
    for doc in documents():
        for indent, lang, body in re.findall(r"^( *)```(\w*)\n(.*?)^\1```", doc.read_text(), re.S | re.M):
            out.append((lang, "".join(line[len(indent):] + "\n" for line in body.splitlines())))
    return out


def _strip_comment(line: str) -> str:
    """The command without a trailing `# comment` (a # inside quotes stays)."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def doc_commands() -> list[Command]:
    """The documents' commands in order: shell lines of plain/console blocks (a console block's
    commands start with `$ `, the lines after one are its expected output), heredocs, and python
    blocks that are not files (a file block's first line names it: `# copy_plugin.py`)."""
    out: list[Command] = []
    for lang, body in _blocks():
        if lang == "python":
            if not re.match(r"# \w+\.py\n", body):
                out.append(Command(body, "python"))
            continue
        if lang not in SHELL_LANGS:
            continue
        lines = body.splitlines()
        console = any(line.startswith("$ ") for line in lines)
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if console:
                if not line.startswith("$ "):
                    if out and line.strip():
                        out[-1].expected.append(line)
                    continue
                line = line[2:]
            text = _strip_comment(line)
            while text.endswith("\\") and i < len(lines):
                text = text[:-1].rstrip() + " " + _strip_comment(lines[i].strip())
                i += 1
            if not text or not text.startswith(PROGRAMS):
                continue
            if "<<" in text:  # a heredoc: its lines up to the closing tag belong to it
                tag = text.split("<<", 1)[1].strip().strip("'\"")
                while i < len(lines) and lines[i].strip() != tag:
                    i += 1
                i += 1
                out.append(Command(text, "heredoc"))
                continue
            out.append(Command(text, "shell"))
    return out


def doc_file(first_line: str) -> str:
    for _, block in _blocks():
        if block.startswith(first_line + "\n"):
            return block.split("\n", 1)[1]
    raise AssertionError(f"no document has a code block starting with {first_line!r}")


def _normal(text: str) -> str:
    return " ".join(text.split())


def test_skip_list_is_explicit_and_current():
    """Exactly these commands are skipped, each for a reason; no stale entries."""
    texts = [c.text for c in doc_commands()]
    assert set(SKIPPED) <= set(texts), f"SKIPPED names commands no document has: {set(SKIPPED) - set(texts)}"
    assert set(SMALLER) <= set(texts), f"SMALLER names commands no document has: {set(SMALLER) - set(texts)}"
    assert {c for c in texts if c in SKIPPED} == set(SKIPPED)
    hub = [c for c, reason in SKIPPED.items() if reason.startswith(HUB)]
    assert len(hub) == 5 and all("gpt2-small" in c or "gpt-neo" in c for c in hub)
    assert all(reason for reason in SKIPPED.values())
    assert len(texts) - len(SKIPPED) >= 30  # the rest all run below


def test_arith_k3_block_is_the_file():
    assert doc_file("name: arith_k3                # must match the file name") == (
        ROOT / "tasks/examples/arith_k3.yaml").read_text().split("\n", 1)[1]


def _child_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run(command: Command, capsys) -> tuple[int, str]:
    argv = shlex.split(command.text) + SMALLER.get(command.text, [])
    if command.kind == "python":
        exec(compile(command.text, "docs (python block)", "exec"), {"__name__": "docs"})
        return 0, capsys.readouterr().out
    if argv[0] != "circuitbench":
        raise AssertionError(f"no runner for {command.text!r}: add it to SKIPPED with a reason, or run it here")
    if "--plugin" in argv:  # a plugin registers for the whole process: run it in its own
        proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=_child_env(),
                              timeout=600)
        return proc.returncode, proc.stdout + proc.stderr
    code, out, err = cli(capsys, *argv[1:])
    return code, out + err


def test_doc_commands_run(tmp_path, monkeypatch, capsys):
    """Every documented command that is not skipped exits 0 (in reading order: later ones read what
    earlier ones wrote), and prints a console block's expected lines."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "tasks").symlink_to(ROOT / "tasks")
    (tmp_path / "copy_plugin.py").write_text(doc_file("# copy_plugin.py"))
    (tmp_path / "copy_task.yaml").write_text(doc_file("# copy_task.yaml"))
    failures, ran = [], 0
    for command in doc_commands():
        if command.text in SKIPPED:
            continue
        code, out = _run(command, capsys)
        ran += 1
        if code != 0:
            failures.append(f"{command.text!r} exited {code}:\n{out[-1500:]}")
            continue
        missing = [line for line in command.expected if _normal(line) not in _normal(out)]
        if missing:
            failures.append(f"{command.text!r} did not print {missing}:\n{out[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert ran >= 30
    # what the commands wrote is what the documents say they write
    assert (tmp_path / "results/toy-tasks/ioi.json").is_file()
    assert (tmp_path / "results/leaderboard/index.html").is_file()
    assert (tmp_path / "runs/toy-induction-2l/model.safetensors").is_file()


@pytest.mark.parametrize("line", ["circuitbench run --task x --model y  # a comment", "cat > a.yaml <<'YAML'"])
def test_command_parsing(line):
    assert _strip_comment(line) in ("circuitbench run --task x --model y", "cat > a.yaml <<'YAML'")


def test_every_page_is_in_the_nav_and_every_document_exists():
    """A page left out of mkdocs.yml's nav would be built but unreachable (and its commands not run)."""
    docs = ROOT / "docs"
    pages = {path.relative_to(docs).as_posix() for path in docs.rglob("*.md")} - {"includes/abbreviations.md"}
    nav = {path.relative_to(docs).as_posix() for path in documents()[1:]}
    assert pages == nav
    assert all(path.is_file() for path in documents())


def test_readme_is_short():
    """The README is the five-minute read; everything else lives in docs/."""
    assert len(README.read_text().splitlines()) <= 250


def test_site_builds_with_warnings_as_errors(tmp_path):
    """`make docs` in miniature: mkdocs --strict fails on a broken link, a missing anchor, a page
    outside the nav or an API reference entry that no longer resolves."""
    pytest.importorskip("mkdocs")  # the dev extra installs it
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site/reference/running/index.html").is_file()
    assert "circuitbench.pipeline.runner.run" in (tmp_path / "site/reference/running/index.html").read_text()


def test_links_in_the_readme_and_the_pages_resolve():
    """Relative links of the README (read on the forge) and of every page point at files that exist."""
    for doc in documents():
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", doc.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"


def test_the_home_page_is_the_readme_with_site_links(tmp_path):
    """docs/hooks.py serves README.md as the site's home: links into docs/ lose the prefix, links
    outside the site become code, external links stay."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = type("Page", (), {"file": type("File", (), {"src_uri": "index.md"})()})()
    home = hooks.on_page_markdown("", page, None, None)
    assert "](guide/cli.md)" in home and "](docs/" not in home
    assert "`leaderboards/`" in home and "](leaderboards/" not in home
    assert "](https://github.com/hannamw/EAP-IG)" in home
    other = type("Page", (), {"file": type("File", (), {"src_uri": "glossary.md"})()})()
    assert hooks.on_page_markdown("x", other, None, None) == "x"
