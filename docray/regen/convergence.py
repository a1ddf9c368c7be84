"""The joint training's stopping rule: stop when ALL three losses (content, type, generation) converge.

A loss has converged when its latest validation value is at or below its `target`, or when it has
plateaued: over the last `patience` epochs it improved on its earlier best by less than
`min_rel_improvement` (relative). Both are configurable per loss.
"""
from __future__ import annotations

from pydantic import Field

from docray.config import Config

LOSSES = ("content", "type", "generation")


class LossRule(Config):
    target: float = Field(0.0, ge=0, description="converged once the val loss is <= target (0: plateau only)")
    patience: int = Field(3, ge=1, description="epochs over which a plateau is judged")
    min_rel_improvement: float = Field(0.01, ge=0, description="less relative improvement than this is a plateau")


class Convergence(Config):
    content: LossRule = LossRule(target=0.3)  # token cross-entropy (nats)
    type: LossRule = LossRule(target=0.05)  # cross-entropy (nats)
    generation: LossRule = LossRule(target=0.01)  # MSE in [-1, 1] pixel units


def loss_converged(history: list[float], rule: LossRule) -> bool:
    if not history:
        return False
    if history[-1] <= rule.target:
        return True
    if len(history) <= rule.patience:
        return False
    before, recent = min(history[: -rule.patience]), min(history[-rule.patience:])
    return (before - recent) < rule.min_rel_improvement * abs(before)


def converged(history: dict[str, list[float]], rules: Convergence) -> dict[str, bool]:
    """{loss: converged?} for the three losses; training stops when all are True."""
    return {k: loss_converged(history.get(k, []), getattr(rules, k)) for k in LOSSES}
