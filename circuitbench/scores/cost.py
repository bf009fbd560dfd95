"""What a scoring method cost: seconds and forward-equivalents, measured by run_methods around
each method (models/forward_meter.py counts the forwards; the method knows nothing of it).

Forward-equivalents are in units of one forward of every prompt the method ran on, batched as it
ran them (rows × padded width of each batch of `batch_size`): a method that runs the corrupted
prompts once and the clean ones once with a backward (EAP) costs 1 + 1 + 2 = 4, whatever the
batch size; exact edge patching costs about one per edge, less the share of blocks its forwards
skip. This is how the field's papers compare methods (ACDC, EAP-IG, MIB count forward passes over
the data set, a backward as two)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from circuitbench.models.forward_meter import ForwardMeter
from circuitbench.prompts.encoding import EncodedPrompts


class MethodCost(BaseModel):
    """One method's run: wall time and model work (scores/cost.py)."""

    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(description="wall time of the method's run in this process, in seconds")
    forwards: float = Field(
        description="model work in forward-equivalents: 1 = one forward of every prompt it ran on (each batch of the "
        "run's batch size at its padded width); a forward resumed at block L of n counts (n − L)/n, positions run "
        "after a cached key/value prefix their share, copies stacked on the batch axis one forward each, and a "
        "backward 2 more")
    backwards: float = Field(0.0, description="of which backward passes, in the same unit before their weight of 2 "
                             "(forward-equivalents of the forwards that kept their graph for a backward)")
    calls: int = Field(description="model calls it made (a batch of stacked copies is one call)")
    prompts: int = Field(description="prompts it ran on (this process's shard under data parallelism)")
    activation_cache: bool = Field(False, description="an activation cache could serve its unpatched forwards: "
                                   "what the cache held cost nothing here (compare costs of runs with --no-cache)")


def prompt_positions(data: EncodedPrompts, batch_size: int) -> int:
    """Token-positions of one forward of every prompt, batched as methods batch them (each batch of
    `batch_size` at its own padded width): the unit of forward-equivalents."""
    return sum(len(b) * int(b.tokens.shape[1]) for b in data.batches(max(batch_size, 1)))


def method_cost(meter: ForwardMeter, data: EncodedPrompts, batch_size: int, seconds: float,
                activation_cache: bool = False) -> MethodCost:
    """The record of one method's run from its meter, on the prompts it ran on."""
    unit = max(prompt_positions(data, batch_size), 1)
    return MethodCost(seconds=round(seconds, 4), forwards=round((meter.forward + 2 * meter.backward) / unit, 4),
                      backwards=round(meter.backward / unit, 4), calls=meter.calls, prompts=len(data),
                      activation_cache=activation_cache)
