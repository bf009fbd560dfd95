"""The wheel carries tasks/, models.yaml and the toy zoo, and an installed package finds them."""
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_contains_data_and_installed_package_finds_it(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w",
         str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("circuitbench-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_tasks = {p.name for p in (REPO / "tasks").glob("*.yaml")}
    assert {f"circuitbench/_data/tasks/{t}" for t in shipped_tasks} <= names
    assert "circuitbench/_data/models.yaml" in names
    assert "circuitbench/zoo/toy-induction-2l/model.safetensors" in names

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = (
        "import circuitbench.specs.catalog as c; d = c.data_dir(); "
        "print(d); print(sorted(c.all_tasks())); print(len(c.model_registry()))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == str(target / "circuitbench" / "_data")
    assert "induction" in lines[1] and "fibonacci" in lines[1]
    assert int(lines[2]) >= 14
