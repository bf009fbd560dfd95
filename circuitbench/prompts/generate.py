"""A task's prompts from its spec: the registered generator, the spec's count, seed and split."""
from __future__ import annotations

from circuitbench.errors import CircuitbenchError
from circuitbench.prompts.base import PromptSet
from circuitbench.registry import exit_call
from circuitbench.specs.registries import GENERATORS
from circuitbench.specs.task import TaskSpec


def generate_prompts(spec: TaskSpec) -> PromptSet:
    """Deterministic for a spec: the same prompts on any machine (a local RNG seeded from it)."""
    generator = GENERATORS.get(spec.generator.name)
    n = None if spec.n_prompts == "all" else spec.n_prompts
    try:
        prompts = generator.generate(spec.generator, n, spec.seed, spec.split)
    except CircuitbenchError as e:
        raise CircuitbenchError(f"Task '{spec.name}': {e}") from None
    except SystemExit as e:  # a plugin generator that exits must not end the command (or a grid) silently
        raise CircuitbenchError(f"Task '{spec.name}': generator '{spec.generator.name}' called {exit_call(e)}; a "
                                "plugin must raise an exception instead of exiting.") from None
    return PromptSet(task=spec.name, split=spec.split, seed=spec.seed, prompts=prompts)


def shortfall(spec: TaskSpec, prompts: PromptSet) -> str | None:
    """A sentence when the split holds fewer distinct prompts than the spec asks for, else None."""
    if spec.n_prompts == "all" or len(prompts.prompts) >= spec.n_prompts:
        return None
    return (f"task '{spec.name}': the {spec.split} split holds {len(prompts.prompts)} distinct prompts with these "
            f"params; running all {len(prompts.prompts)} of the {spec.n_prompts} asked")
