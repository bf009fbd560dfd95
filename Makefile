# Two commands on a fresh clone: `make demo` and `make test`. Set-up is idempotent: stamps
# record what is installed, so a second run installs nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CB := $(VENV)/bin/circuitbench
# torch first, in its own step, pinned to the local CPU wheel: an open `torch` requirement
# would otherwise pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error

.PHONY: setup demo test test-all lint schema known-answers bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-installed: | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q "$(TORCH_SPEC)"
	touch $@

$(VENV)/.deps-installed: pyproject.toml $(VENV)/.torch-installed
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	touch $@

setup: $(VENV)/.deps-installed

# The main job on the shipped toys (no download), then a random-init baseline whose faithfulness
# is reported undefined: its heads have no measurable effect. About 2 minutes on 2 busy cores.
demo: setup
	$(CB) run --task suite --model toy-tasks --out results
	$(CB) run --task induction --model toy-induction-2l --out results
	$(CB) overlap "results/toy-tasks/*.json" --metric spearman,jaccard --plot results/overlap_toy-tasks.png
	$(CB) run --task ioi --model gpt2-small --init random --n 16 --methods attribution_patching,previous_token \
		--out results
	$(CB) leaderboard --results results --out results/leaderboard
	$(CB) report results/toy-induction-2l/induction.json
	$(CB) report results/toy-tasks/ioi.json

# Every command shown in README.md, run (the skipped ones listed with their reason in the test)
.PHONY: readme-check
readme-check: setup
	$(PY) -m pytest -q tests/test_readme.py

# The committed tables in leaderboards/: the shipped toys on every task they do, the tracr zoo on
# its known-answer tasks, and a random-init baseline (a section of their own; the smallest
# registry model keeps the target at ~15 minutes on 2 busy cores; add more with BASELINES=a,b)
BASELINES ?= pythia-70m
.PHONY: leaderboards
leaderboards: setup
	rm -rf results/committed
	$(CB) run --task suite --model toy-tasks --out results/committed -q
	$(CB) run --task induction --model toy-induction-2l --out results/committed -q
	$(CB) run --task sorting --model toy-sort-1l --out results/committed -q
	for pair in $(KNOWN); do $(CB) run --task tracr_$${pair%%:*} --model $${pair##*:} --out results/committed -q || exit 1; done
	$(CB) run --task suite --model $(BASELINES) --init random --n 24 \
		--methods attribution_patching,previous_token,induction --out results/committed -q
	$(CB) leaderboard --results results/committed --out leaderboards --force

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -m "not slow"

test-all: lint
	$(PY) -m pytest -q

# docs/result.schema.json from the RunResult models (a test checks it is current)
schema: setup
	$(CB) schema --out docs/result.schema.json

# Every method on the tracr zoo (models with known circuits) and the recovery table (README, "Known answers")
KNOWN := reverse:tracr-reverse hist:tracr-hist sort_unique:tracr-sort-unique detect_abc:tracr-detect-abc
known-answers: setup
	rm -rf results/known
	for pair in $(KNOWN); do $(CB) run --task tracr_$${pair%%:*} --model $${pair##*:} --out results/known -q || exit 1; done
	$(CB) recovery "results/known/*/*.json" --markdown results/known/recovery.md

bench: setup
	$(PY) benchmarks/run.py --with-neo
	$(PY) benchmarks/edges.py

clean:
	rm -rf $(VENV) results build dist
