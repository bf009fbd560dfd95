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

.PHONY: setup demo test test-all lint schema known-answers bench bench-peers bench-scale clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-installed: | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q "$(TORCH_SPEC)"
	touch $@

$(VENV)/.deps-installed: pyproject.toml $(VENV)/.torch-installed
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev,ray]"
	touch $@

setup: $(VENV)/.deps-installed

# The main job on the shipped toys (no download), then a random-init baseline whose faithfulness
# is reported undefined: its heads have no measurable effect; the leaderboard writes a report per
# unit. About 2 minutes on 2 busy cores.
demo: setup
	$(CB) run --task suite --model toy-tasks --out results
	$(CB) run --task induction --model toy-induction-2l --out results
	$(CB) overlap "results/toy-tasks/*.json" --metric spearman,jaccard --plot results/overlap_toy-tasks.png
	$(CB) run --task ioi --model gpt2-small --init random --n 16 --methods attribution_patching,previous_token \
		--out results
	$(CB) leaderboard --results results --out results/leaderboard
	@echo
	@echo "Done: results in results/. Open first:"
	@echo "  1. results/leaderboard/index.html                              every model x task: circuit, verdict, faithfulness"
	@echo "  2. results/leaderboard/reports/toy-tasks/ioi/report.html       one unit: its circuit, how far to trust it, heatmaps"
	@echo "  3. results/leaderboard/reports/toy-induction-2l/induction/report.html   induction heads on a 2-layer toy"
	@echo "  4. results/overlap_toy-tasks.png                               how much the toy's task circuits overlap"
	@echo "A report of any result: $(CB) report results/<model>/<task>.json"

# Every command shown in README.md and docs/, run (the skipped ones listed with their reason in the test)
.PHONY: docs-check docs
docs-check: setup
	$(PY) -m pytest -q tests/test_docs.py

# The documentation site (mkdocs-material; API reference from the docstrings) into site/, warnings as errors
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

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
	$(CB) run --task seq_days,seq_digits,seq_letters,seq_months,seq_numwords,seq_sentence --model toy-sequences \
		--out results/committed -q
	for pair in $(KNOWN); do $(CB) run --task tracr_$${pair%%:*} --model $${pair##*:} --out results/committed -q || exit 1; done
	for pair in $(PLANTED); do $(CB) run --task planted_$${pair%%:*} --model $${pair##*:} --out results/committed -q || exit 1; done
	$(CB) run --task suite --model $(BASELINES) --init random --n 24 \
		--methods attribution_patching,previous_token,induction --out results/committed -q
	$(CB) leaderboard --results results/committed --out leaderboards --force

lint: setup
	$(VENV)/bin/ruff check .

# Two pytest workers (pytest-xdist): the suite is CPU-bound single-threaded work, so it takes about half the time on 2 cores.
# loadgroup: tests marked xdist_group(name) share one worker (tests/pipeline/test_executors.py: one Ray cluster).
TEST_WORKERS ?= 2

test: lint
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadgroup

test-all: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# docs/result.schema.json from the RunResult models (a test checks it is current)
schema: setup
	$(CB) schema --out docs/result.schema.json --force

# Every method on the tracr zoo and the planted-circuit models (models with known circuits; planted ones have
# active, causally irrelevant distractors): the tasks' own runs, then every registered node and edge method one
# unit each (benchmarks/method_leaderboard.py), then the recovery table with bootstrap intervals (README, "Known answers")
KNOWN := reverse:tracr-reverse hist:tracr-hist sort_unique:tracr-sort-unique detect_abc:tracr-detect-abc
PLANTED := reverse:planted-reverse hist:planted-hist detect_abc:planted-detect-abc
known-answers: setup
	rm -rf results/known
	for pair in $(KNOWN); do $(CB) run --task tracr_$${pair%%:*} --model $${pair##*:} --out results/known -q || exit 1; done
	for pair in $(PLANTED); do $(CB) run --task planted_$${pair%%:*} --model $${pair##*:} --out results/known -q || exit 1; done
	$(PY) benchmarks/method_leaderboard.py --out results/known/methods $(foreach p,$(KNOWN),tracr_$(p)) \
		$(foreach p,$(PLANTED),planted_$(p))
	$(CB) recovery "results/known/*/*.json" "results/known/methods/*/*/*.json" --markdown results/known/recovery.md

# The method leaderboard (leaderboards/methods.md, .html): every registered node and edge method, read from the
# registry when it runs, on the tracr zoo and the planted models; one unit per method, so that a method its own
# max_forwards guard refuses is listed with the reason and the others stand (benchmarks/method_leaderboard.py)
.PHONY: method-leaderboard
method-leaderboard: setup
	rm -rf results/methods
	$(PY) benchmarks/method_leaderboard.py --out results/methods $(foreach p,$(KNOWN),tracr_$(p)) \
		$(foreach p,$(PLANTED),planted_$(p))
	$(CB) leaderboard --by method --results results/methods --out leaderboards --force

bench: setup
	$(PY) benchmarks/run.py --with-neo
	$(PY) benchmarks/edges.py
	$(PY) benchmarks/memory.py
	@if [ -f $(PEERS)/.deps-installed ]; then $(MAKE) --no-print-directory bench-peers; \
	else echo "(peer table skipped: \`make bench-peers\` builds the peers' environment and runs it)"; fi

# The real peers (TransformerLens 2.x, auto-circuit, nnsight if it installs) in their own venv, run
# side by side with circuitbench on the same weights, prompts and metric (README, "Performance").
PEERS := benchmarks/peers/.venv
PEERS_PY := $(PEERS)/bin/python
$(PEERS_PY):
	$(PYTHON) -m venv $(PEERS)

$(PEERS)/.torch-installed: | $(PEERS_PY)
	$(PEERS_PY) -m pip install --disable-pip-version-check -q "$(TORCH_SPEC)"
	touch $@

$(PEERS)/.deps-installed: benchmarks/peers/requirements.txt $(PEERS)/.torch-installed
	$(PEERS_PY) -m pip install --disable-pip-version-check -q -r benchmarks/peers/requirements.txt
	$(PEERS_PY) -m pip install --disable-pip-version-check -q nnsight || echo "nnsight did not install: skipped"
	touch $@

BENCH_ROUNDS ?= 3
# 8 prompts: 3 rounds then fit in ~15 min on 2 shared cores (the per-head loops dominate)
BENCH_PEERS_N ?= 8
bench-peers: setup $(PEERS)/.deps-installed
	$(PY) benchmarks/peer_compare.py --peers-python $(PEERS_PY) --rounds $(BENCH_ROUNDS) --n $(BENCH_PEERS_N)

# Scale curves (opt-in: GPT-2 medium/large take long and much memory on a small machine)
SCALE_ARGS ?=  # --full: GPT-2 large, Pythia-410m and exact patching of 256 prompts too (hours on 2 cores)
bench-scale: setup
	$(PY) benchmarks/scale.py $(SCALE_ARGS)

# Every method on the GPU (float32, bfloat16) against CPU float32; without one, CPU bf16 against float32
.PHONY: gpu-check
gpu-check: setup
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) results build dist site
