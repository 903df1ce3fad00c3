"""The `edgefleet` command. Sub-commands load lazily, so `edgefleet agent` on a device never
imports the compiler's or the fleet's dependencies."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from edgefleet.errors import run_guarded, set_debug

# name -> (module:attribute, extra that provides its dependencies, help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "keys": ("agent.cli_bundle:keys", "", "Generate and inspect Ed25519 signing keys."),
    "bundle": ("agent.cli_bundle:bundle", "", "Build, inspect and verify signed model bundles."),
    "devices": ("agent.cli_devices:devices", "", "List, show, validate and detect device classes."),
    "agent": ("agent.cli_agent:agent", "", "Run the edge agent and talk to it."),
    "compile": ("compiler.cli:compile_command", "compiler", "Distil, quantize, convert, gate and sign a model."),
    "fleet": ("fleet.cli:fleet", "fleet", "Run the fleet manager and administer it."),
    "demo": ("edgefleet.demo:demo", "all", "The whole system on one machine, on embedded defaults."),
    "rollout": ("edgefleet.ops.rollout:rollout", "", "Create, watch, approve, pause and roll back rollouts."),
    "alerts": ("edgefleet.ops.alerts:alerts", "", "List and acknowledge the fleet's drift alerts."),
    "models": ("edgefleet.ops.models:models", "", "List, show and upload models in the fleet's catalogue."),
    "explain": ("edgefleet.ops.explain:explain", "", "Ask devices to explain sampled requests; read the answers."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        target, extra, _ = COMMANDS[cmd_name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = (f" Install the '{extra}' extra: pip install '.[{extra}]' in a checkout, or "
                    f"'dist/edgefleet-*.whl[{extra}]' (docs/deploy.md §0)." if extra else "")
            raise click.ClickException(f"'{cmd_name}' is not available here ({exc}).{hint}") from exc
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, _, text) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgefleet")
@click.option("--log-level", default=lambda: os.environ.get("EDGEFLEET_LOG_LEVEL", "WARNING"),
              show_default="WARNING or $EDGEFLEET_LOG_LEVEL", help="Logging level.")
@click.option("--debug", is_flag=True, envvar="EDGEFLEET_DEBUG",
              help="Show the Python traceback of an error instead of its one-line message.")
def cli(log_level: str, debug: bool) -> None:
    """EdgeFleet: compile models for edge device classes, ship them signed, keep them healthy.

    Exit codes: 0 success, 1 a check failed (gate, verification), 2 bad input or usage.
    Errors are one line on stderr; --debug adds the traceback.
    """
    set_debug(debug)
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def main() -> None:
    run_guarded(cli, "edgefleet")


if __name__ == "__main__":
    main()
