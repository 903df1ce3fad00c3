"""The analytics tests run real in-process agents: reuse the agent fixtures (keys, bundles, agent_factory)."""

from tests.agent.conftest import (  # noqa: F401
    agent_factory,
    bundles,
    config_factory,
    digits,
    fleet_keys,
    model_files,
)
