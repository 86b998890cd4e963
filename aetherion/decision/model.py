"""The decision record (pydantic: it is stored and served) and the policy's restorable state."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ACTIONS", "POSITIONS", "POSITION_LEVEL", "Action", "Decision", "Inputs", "PolicyState",
    "Position", "decision_id",
]

Action = Literal["BUY", "SELL", "HOLD"]
Position = Literal["long", "flat", "short"]
ACTIONS: Final = ("BUY", "SELL", "HOLD")
POSITIONS: Final = ("long", "flat", "short")
#: A whole position as a signed level (an exposure of all the capital).
POSITION_LEVEL: Final[dict[str, int]] = {"short": -1, "flat": 0, "long": 1}
Inputs = dict[str, float | int | str | bool | None]

TEXT_MAX = 255  # the rule and reason columns


def decision_id(market: str, timeframe: str, bar_time: int) -> str:
    """The id of the one decision a market may take on a bar: re-delivery gives the same id."""
    return f"{market}:{timeframe}:{bar_time}"


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


class Decision(BaseModel):
    """What the policy decided on one closed bar, with everything it read to decide it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(max_length=64)
    market: str
    timeframe: str
    bar_time: int  # open time of the decided bar, epoch ms
    action: Action
    strategy: str | None
    regime: str
    confidence: float | None
    price: float  # close of the decided bar
    rule: str  # "<strategy or gate>.<branch>", e.g. "trend_long.enter", "crisis.exit"
    inputs: Inputs
    position_before: Position
    position_after: Position
    #: the signed fraction of capital held after this bar: -1 (all short) .. 0 .. 1 (all long)
    exposure: float = Field(ge=-1.0, le=1.0, allow_inf_nan=False)
    suppressed: bool = False  # a signal that the gates or the cooldown refused
    reason: str | None = None
    model_version: int | None = None
    created_at: int  # wall clock, epoch ms

    @model_validator(mode="before")
    @classmethod
    def _fill_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("id"):
            data = {**data, "id": decision_id(data["market"], data["timeframe"],
                                              data["bar_time"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> Decision:
        if self.id != decision_id(self.market, self.timeframe, self.bar_time):
            raise ValueError(f"id {self.id!r} does not match (market, timeframe, bar_time)")
        if not math.isfinite(self.price):
            raise ValueError("price must be finite")
        return self

    @field_validator("rule", "reason")
    @classmethod
    def _fit_column(cls, v: str | None) -> str | None:
        return v if v is None or len(v) <= TEXT_MAX else v[: TEXT_MAX - 1] + "…"

    @field_validator("confidence")
    @classmethod
    def _finite_confidence(cls, v: float | None) -> float | None:
        return _finite(v)  # type: ignore[no-any-return]

    @field_validator("inputs")
    @classmethod
    def _finite_inputs(cls, v: Inputs) -> Inputs:
        return {k: _finite(x) for k, x in v.items()}  # JSON has no NaN


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What a policy needs to go on after a restart (all of it is in the ``decisions`` rows)."""

    position: Position = "flat"
    last_bar_time: int | None = None  # newest decided bar: it and older ones are not re-decided
    last_action_time: int | None = None  # bar of the newest BUY or SELL
    bars_since_action: int | None = None  # bars decided after that one (None: no action yet)
    exposure: float = 0.0  # the signed fraction of capital held, -1..1

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, not {self.position!r}")
        if not (math.isfinite(self.exposure) and -1.0 <= self.exposure <= 1.0):
            raise ValueError(f"exposure must be finite and within [-1, 1], not {self.exposure!r}")
