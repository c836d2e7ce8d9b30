"""Field types shared by the config models."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel as _BaseModel
from pydantic import BeforeValidator, ConfigDict, Field

from spek_sentinel.domain.units import parse_duration


def _duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '30s', '5m' or '1h', not {str(value).lower()}")
    if isinstance(value, str):
        if value.strip().startswith("-"):
            raise ValueError(f"{value!r} is negative; a duration is '0s' or more")
        return parse_duration(value)
    if isinstance(value, int | float):
        raise ValueError(
            f"{value!r} has no unit; write the duration as a string like '{value}s', '5m' or '1h'"
        )
    raise ValueError(f"expected a duration string like '30s', '5m' or '1h', not {value!r}")


Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Ratio = Annotated[float, Field(ge=0, le=1)]


def _threshold_value(value: Any) -> Any:
    # Without this, pydantic reads ``true`` as 1.0 and reports a list twice (".float", ".str").
    shown = str(value).lower() if isinstance(value, bool) else repr(value)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(
            f"expected a number or a string like '5%', '200ms' or '100MB', not {shown}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, not {shown}")
    return value


# A threshold is a number, or a string read in the signal's unit: "5%", "200ms", "100MB".
ThresholdValue = Annotated[float | str, BeforeValidator(_threshold_value)]
Unit = Literal["ratio", "seconds", "bytes", "count", "fps", "bool"]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


class StrictModel(_BaseModel):
    # allow_inf_nan=False: TOML's nan and inf are never a usable threshold or limit
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )
