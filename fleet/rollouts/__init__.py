"""Signed staged rollouts: a model version reaches the fleet wave by wave, only while the
devices' own signed reports say it is at least as good, and is rolled back automatically when not.

Modules: spec (what a rollout is), assignment (which device is in which wave), gates (pure
verdicts), evidence (reads telemetry and device rows), models (database tables), commands
(signed command outbox and publisher), evaluator (the restart-safe tick loop), service
(operator operations + audit), api (Flask blueprint).
"""
