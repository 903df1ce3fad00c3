"""EdgeFleet: the command line that ties compiler, agent and fleet manager together."""

__version__ = "0.1.0"
