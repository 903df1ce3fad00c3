"""Signed staged rollouts: a model version reaches the fleet wave by wave, only while the
devices' own signed reports say it is at least as good, and is rolled back automatically when not.

Modules: spec (what a rollout is; spec_migrations: its versions), assignment (which device is in
which wave), states (the rollout, wave and target state tables) and machine (transition(): the one
writer of statuses and their history), gates (pure verdicts, registered by name; verdict: the
evidence types), evidence (reads telemetry and device rows), models (database tables), commands
(signed command outbox and publisher), tick (one decision) with waves and rollback (carrying it
out), evaluator (the restart-safe loop; leases, config), service (operator operations + audit),
api (Flask blueprint).
"""
