"""circuitbench/errors.py: options validated once, each bad value named by its flag."""
from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, model_validator

from circuitbench.errors import CircuitbenchError, validate_options


class Inner(BaseModel):
    site: str = Field(pattern="^(a|b)$")


class Options(BaseModel):
    n_prompts: int = Field(1, ge=1)
    n_layers: int = Field(1, ge=1)
    inner: Inner | None = None
    low: int = 0
    high: int = 1

    @model_validator(mode="after")
    def _ordered(self) -> "Options":
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


def test_validate_options_returns_the_model():
    assert validate_options(Options, n_prompts=3) == Options(n_prompts=3)


def test_each_bad_value_is_named_by_its_flag():
    with pytest.raises(CircuitbenchError) as err:
        validate_options(Options, {"n_layers": "--layers", "inner.site": "--site"}, n_prompts=0, n_layers=0,
                         inner={"site": "c"})
    message = str(err.value)
    assert message.startswith("Invalid option. --n-prompts: Input should be greater than or equal to 1")
    assert "; --layers: Input should be greater" in message and "; --site: String should match" in message
    with pytest.raises(CircuitbenchError, match=r"^Invalid option. low must not exceed high$"):
        validate_options(Options, low=2)  # a check across fields names no flag: its message names them
