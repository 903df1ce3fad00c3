"""`python -m agent ...`: the same commands as `edgefleet agent ...`."""

from agent.cli_agent import main

if __name__ == "__main__":
    main()
