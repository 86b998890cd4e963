"""The decision stage: strategy → BUY / SELL / HOLD with gating, cooldown and duplicate
protection (``docs/decision.md``)."""

from aetherion.decision.config import DecisionConfig, default_timeframe
from aetherion.decision.model import (
    ACTIONS,
    POSITIONS,
    Action,
    Decision,
    PolicyState,
    Position,
    decision_id,
)
from aetherion.decision.policy import DecisionPolicy

__all__ = [
    "ACTIONS", "POSITIONS", "Action", "Decision", "DecisionConfig", "DecisionPolicy",
    "PolicyState", "Position", "decision_id", "default_timeframe",
]
