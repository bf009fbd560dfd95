"""The memory planner (scores/memory_plan.py) and the budget's parsing (specs/byte_size.py, --max-memory):
the plan respects its budget and shrinks with it, a budget below the weights or below one prompt's
minimum is refused naming both figures, and sizes parse as people write them."""
import pytest
from typer.testing import CliRunner

from circuitbench.errors import CircuitbenchError
from circuitbench.scores.memory_plan import HEADROOM, ModelShape, Workload, plan_memory, predict_peak
from circuitbench.specs.byte_size import format_bytes, parse_byte_size
from circuitbench.specs.options import RunOptions

# GPT-2 small's config (transformers' GPT2Config defaults) and IOI's width
SMALL = ModelShape.of_config(n_layers=12, n_heads=12, d_model=768, d_vocab=50257, n_params=124_439_808)
IOI = Workload(seq_len=18)
GB = 1000**3


def test_sizes_parse_as_written():
    assert parse_byte_size("512MB") == 512 * 1000**2
    assert parse_byte_size("4GB") == 4 * GB
    assert parse_byte_size("1.5GiB") == 3 * 2**29
    assert parse_byte_size("800 M") == 800 * 2**20 and parse_byte_size(2048) == 2048
    for bad in ("4XB", "", "GB", "-1GB", "0"):
        with pytest.raises(CircuitbenchError, match="--max-memory"):
            parse_byte_size(bad)
    assert format_bytes(parse_byte_size("1.40GB")) == "1.40 GB"
    assert RunOptions(max_memory="2GB").execution().max_memory == 2 * GB


def test_the_graph_counts_of_a_config():
    assert SMALL.n_sources == 1 + 12 * 13 and SMALL.destinations_per_layer == 37
    assert SMALL.weight_bytes == 4 * 124_439_808


@pytest.mark.parametrize("method", ["eap", "eap_ig", "edge_patching"])
def test_the_plan_fits_its_budget_and_shrinks_with_it(method):
    plans = [plan_memory(method, SMALL, IOI, 64, budget) for budget in (8 * GB, 2 * GB, int(1.2 * GB), 1 * GB)]
    for plan in plans:
        assert plan.predicted_peak_bytes <= HEADROOM * plan.budget_bytes
        # what it picked is the predictor's own figure at those sizes
        assert plan.predicted_peak_bytes == predict_peak(method, SMALL, IOI, plan.batch_size, plan.source_chunk,
                                                         plan.sum_steps)
    work = [(p.batch_size, p.source_chunk, p.sum_steps) for p in plans]
    assert work == sorted(work, reverse=True) and work[0] != work[-1]  # a smaller budget: smaller chunks
    # the largest: one more prompt per sub-batch would not fit (unless the run's batch is reached)
    for plan in plans:
        if plan.batch_size < 64 and plan.source_chunk == SMALL.n_sources:
            assert predict_peak(method, SMALL, IOI, plan.batch_size + 1, plan.source_chunk,
                                plan.sum_steps) > HEADROOM * plan.budget_bytes


def test_the_peak_grows_with_batch_and_sources():
    for method in ("eap", "eap_ig", "edge_patching"):
        assert predict_peak(method, SMALL, IOI, 8, 157) < predict_peak(method, SMALL, IOI, 16, 157)
        assert predict_peak(method, SMALL, IOI, 8, 40) <= predict_peak(method, SMALL, IOI, 8, 157)
        assert predict_peak(method, SMALL, IOI, 1, 1) > SMALL.weight_bytes


def test_a_budget_below_the_weights_is_refused_naming_both():
    with pytest.raises(CircuitbenchError, match=r"--max-memory 400 MB is below the weights alone \(498 MB"):
        plan_memory("eap", SMALL, IOI, 64, 400 * 1000**2, model_name="gpt2-small")


def test_a_budget_below_one_prompt_is_refused_naming_the_minimum():
    smallest = predict_peak("eap", SMALL, IOI, 1, 1) / HEADROOM
    with pytest.raises(CircuitbenchError, match=rf"minimum .* about {format_bytes(smallest)}"):
        plan_memory("eap", SMALL, IOI, 64, SMALL.weight_bytes + 1000)


def test_max_memory_on_the_command_line(monkeypatch):
    from circuitbench.cli import app

    seen = {}

    def fake_grid(*args, **kwargs):  # the options the grid would run with
        seen["options"] = args[2]
        return []

    monkeypatch.setattr("circuitbench.pipeline.grid.run", fake_grid)
    runner = CliRunner()
    ok = runner.invoke(app, ["run", "--task", "ioi", "--model", "gpt2-small", "--init", "random",
                             "--max-memory", "1.5GiB", "-q"])
    assert ok.exit_code == 0, ok.output
    assert seen["options"].max_memory == 3 * 2**29 and seen["options"].execution().max_memory == 3 * 2**29
    bad = runner.invoke(app, ["run", "--task", "ioi", "--model", "gpt2-small", "--max-memory", "lots"])
    assert isinstance(bad.exception, CircuitbenchError) and bad.exception.exit_code == 2  # entry.py: exit 2
    assert "--max-memory 'lots': expected a size such as 512MB" in str(bad.exception)
