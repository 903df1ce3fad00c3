"""The operator CLI (`edgefleet rollout|alerts|models`): the fleet's REST API from a terminal.

Standard library and click only, so it works wherever `edgefleet` is installed (no fleet extra):
client.py talks HTTP and turns every failure into one line, output.py prints tables or JSON, and
one module per command group holds the commands.
"""
