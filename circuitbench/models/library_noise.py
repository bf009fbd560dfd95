"""The model libraries' chatter kept out of a circuitbench user's terminal: their log records and
warnings speak to their own developers (e.g. kernels' "Skipping publisher trust check for ..." on
every hub model load offline, transformers' notes on unused weights). The CLI's entry calls this;
a notebook keeps the libraries' defaults. circuitbench's own logs and warnings are untouched."""
from __future__ import annotations

import logging
import os
import sys
import warnings

LIBRARIES = ("transformers", "transformer_lens", "huggingface_hub", "kernels", "accelerate", "torch")


def quiet_model_libraries() -> None:
    """Their loggers at ERROR, transformers' own verbosity at error (as TRANSFORMERS_VERBOSITY,
    read when it is imported; a user's own setting wins), and their Python warnings ignored."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=rf"({'|'.join(LIBRARIES)})(\.|$)")
    if "transformers" in sys.modules:  # imported already (a plugin, a test): its own handler too
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
