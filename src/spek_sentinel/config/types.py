"""Field types shared by the config models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel as _BaseModel
from pydantic import BeforeValidator, ConfigDict, Field

from spek_sentinel.domain.units import parse_duration


def _duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s', '5m' or '1h'")
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(
        f"expected a duration string like '30s', '5m' or '1h', not {type(value).__name__} "
        f"{value!r} (a bare number has no unit)"
    )


Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Ratio = Annotated[float, Field(ge=0, le=1)]
# A threshold is a number, or a string read in the signal's unit: "5%", "200ms", "100MB".
ThresholdValue = float | str
Unit = Literal["ratio", "seconds", "bytes", "count", "fps", "bool"]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


class StrictModel(_BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
