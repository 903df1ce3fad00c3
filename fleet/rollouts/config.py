"""Settings every rollout decision needs (the evaluator's tick and the operator's rollback)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

ACTOR = "rollout-evaluator"              # the audit actor of every automatic decision
OPERATOR_LEASE = "operator-commands"     # publishes commands that belong to no rollout


@dataclass
class EvaluatorConfig:
    public_url: str = "http://127.0.0.1:8080"
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{id(object())}")
    lease_ttl_s: float = 5.0          # renewed every tick; a crashed holder is replaced this soon
    record_every_s: float = 5.0       # store gate values at least this often (always on change)
    command_ttl_s: float = 3600.0
