"""models/library_noise.py: what the CLI's entry does so that the model libraries' log lines and
warnings stay out of a user's terminal, while circuitbench's own are printed."""
from __future__ import annotations

import os
import subprocess
import sys

NOISE_PROBE = """
import logging, sys, warnings
from circuitbench.models.library_noise import quiet_model_libraries
quiet_model_libraries()
from kernels._internals.hf_hub import _check_trust_remote_code
_check_trust_remote_code("kernels-community/activation", local_files_only=True, trust_remote_code=False)
warnings.warn_explicit("a deprecation meant for library authors", FutureWarning, "x.py", 1, module="transformers.x")
from transformers.utils import logging as hf_logging
hf_logging.get_logger("transformers.modeling_utils").warning("some weights were not used")
logging.getLogger("circuitbench").warning("ours stays")
warnings.warn_explicit("our own warning stays", UserWarning, "y.py", 1, module="circuitbench.y")
"""


def test_third_party_noise_stays_out_of_the_terminal(tmp_path):
    """kernels' "Skipping publisher trust check" line (on every hub model load offline), transformers'
    log records and third-party warnings are silenced by the CLI's entry; circuitbench's own are not."""
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}  # as a user's shell has it
    done = subprocess.run([sys.executable, "-c", NOISE_PROBE], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "publisher trust" not in done.stderr and "library authors" not in done.stderr
    assert "weights were not used" not in done.stderr
    assert "ours stays" in done.stderr and "our own warning stays" in done.stderr
    # without it, the same code prints the line (the probe can fail)
    unquieted = NOISE_PROBE.replace("quiet_model_libraries()\n", "")
    loud = subprocess.run([sys.executable, "-c", unquieted], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert "Skipping publisher trust check" in loud.stderr and "weights were not used" in loud.stderr
