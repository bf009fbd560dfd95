"""What an overlap computation is parametrised by (`OverlapSettings`), apart from the metrics
themselves (circuits/overlap_metrics.py): a light module (pydantic only), so the CLI declares its
overlap options from these fields without importing the metrics' numerics."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Alignment = Literal["auto", "head", "relative_depth"]
NullKind = Literal["within_layer", "all"]
DEFAULT_PERMUTATIONS = 200


class OverlapSettings(BaseModel):
    """Everything an overlap computation is parametrised by, checked once."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    alignment: Alignment = Field("auto", description="head: compare head by head (circuits of one shape); "
                                 "relative_depth: on `bins` bins of relative depth; auto: head when the shapes agree.")
    bins: int = Field(10, description="Relative-depth bins for circuits of models of different shape.")
    top_n: int = Field(10, description="Heads compared by top_n_overlap (the top N by |score|).")
    rbo_p: float = Field(0.9, description="Persistence p of rank-biased overlap (rbo, node_rbo, edge_rbo), 0 < p < 1.")
    permutations: int = Field(DEFAULT_PERMUTATIONS, description="Shuffles in the permutation null beside every "
                              "figure (0: no null).")
    null: NullKind = Field("within_layer", description="within_layer: shuffle the second circuit's heads and scores "
                           "within each layer (keeps its layer profile); all: across all heads.")
    seed: int = Field(0, description="Seed of the permutation null (the same pair always gets the same null).")

    @field_validator("bins")
    @classmethod
    def _bins(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"relative depth needs at least 1 bin, not {v}")
        return v

    @field_validator("top_n")
    @classmethod
    def _top_n(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"compare at least the top 1 head, not {v}")
        return v

    @field_validator("rbo_p")
    @classmethod
    def _rbo_p(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"rank-biased overlap's persistence p lies strictly between 0 and 1, not {v}")
        return v

    @field_validator("permutations")
    @classmethod
    def _permutations(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"give 0 (no null) or more, not {v}")
        return v

