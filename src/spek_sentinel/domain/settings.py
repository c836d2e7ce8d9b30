"""Policy settings: plain values the config produces and the policy consumes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PolicySettings:
    auto_rollback: bool = True  # False is shadow mode: decide and page, never execute
    cooldown: float = 3600.0  # at most one automatic rollback per this many seconds
    monitor_for: float = 3600.0  # post-rollback monitoring period
    veto_window: float = 0.0  # immediate rules: "rolling back in N s unless vetoed"
