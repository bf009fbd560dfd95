"""activation_patching (scores/methods/patching.py): `mlps: false` patches the heads only and
returns head scores, the same as the heads of the full run."""
import numpy as np

from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.catalog import load_task


def test_heads_only_scores_equal_the_heads_of_the_full_run(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 6}), model.vocab, model.unk_id, model.n_ctx)

    def run(options):
        return run_methods(model, data, ["activation_patching"], MethodRun(
            4, metric="logit_diff", method_options={"activation_patching": options}))["activation_patching"]

    full, heads_only = run({}), run({"mlps": False})
    assert full.nodes and full.mlps is not None and np.abs(full.mlps).max() > 0
    assert not heads_only.nodes and heads_only.mlps is None and heads_only.produced() == "head_scores"
    assert heads_only.heads.shape == full.heads.shape == (model.n_layers, model.n_heads)
    assert np.abs(heads_only.heads - full.heads).max() <= 1e-5 and np.abs(full.heads).max() > 0
