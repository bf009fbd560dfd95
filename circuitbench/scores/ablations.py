"""Ablations: what takes the place of a component's output when the component is removed.

- `Zero()`: zeros.
- `Mean(over="clean" | "counterfactual")`: the position-wise mean of the output over the task's
  clean (or counterfactual) prompts, each position averaged over the prompts long enough to have it.
- `Counterfactual()`: the output of the same prompt's counterfactual run, position by position
  (MIB's patching).
- `Resample(seed)`: the output of another prompt's clean run, the partner drawn by a seeded
  derangement within prompts of the same token length and named positions (the same template), so
  positions align; a prompt with no such partner is left out.

Task specs name ablations as strings (`circuit.ablation: mean_counterfactual`, `method_options.ablation.kind:
mean`); `parse_ablation` turns them into these types, which the intervention engine takes
(scores/interventions.py, `ablated_batches`). Plain pydantic models: no torch here."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from circuitbench.errors import CircuitbenchError, did_you_mean


class Zero(BaseModel):
    """Replace the output by zeros."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["zero"] = Field("zero", description="the discriminator")

    @property
    def name(self) -> str:
        """The spelling task specs use (`circuit.ablation`), used in reports and messages."""
        return "zero"


class Mean(BaseModel):
    """Replace the output by its position-wise mean over the task's clean or counterfactual prompts."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["mean"] = Field("mean", description="the discriminator")
    over: Literal["clean", "counterfactual"] = Field(
        description="the prompts the mean is taken over, position by position")

    @property
    def name(self) -> str:
        """The spelling task specs use (`circuit.ablation`), used in reports and messages."""
        return f"mean_{self.over}"


class Counterfactual(BaseModel):
    """Replace the output by the same prompt's counterfactual output, position by position."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["counterfactual"] = Field("counterfactual", description="the discriminator")

    @property
    def name(self) -> str:
        """The spelling task specs use (`circuit.ablation`), used in reports and messages."""
        return "counterfactual"


class Resample(BaseModel):
    """Replace the output by another prompt's clean output (a seeded derangement within one template)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["resample"] = Field("resample", description="the discriminator")
    seed: int = Field(0, ge=0, description="seed of the partner draw (a local generator; no global seeding)")

    @property
    def name(self) -> str:
        """The spelling task specs use (`method_options.ablation.kind`), used in reports and messages."""
        return "resample"


Ablation = Annotated[Zero | Mean | Counterfactual | Resample, Field(discriminator="kind")]

# Every string a task spec uses today for an ablation (circuit.ablation, method_options.ablation.kind).
SPEC_NAMES: dict[str, Zero | Mean | Counterfactual] = {
    "zero": Zero(),
    "mean": Mean(over="clean"),  # method_options.ablation.kind
    "mean_clean": Mean(over="clean"),
    "mean_counterfactual": Mean(over="counterfactual"),
    "counterfactual": Counterfactual(),
}


def parse_ablation(name: str, seed: int = 0) -> Ablation:
    """The ablation a task spec names (`seed`: Resample's, from `method_options.ablation.seed`)."""
    if name == "resample":
        return Resample(seed=seed)
    if name not in SPEC_NAMES:
        known = [*SPEC_NAMES, "resample"]
        raise CircuitbenchError(f"Unknown ablation '{name}'.{did_you_mean(name, known)} Known: {', '.join(known)}.")
    return SPEC_NAMES[name]
