"""The `port` command. Each subcommand lives in its own module and is imported only when used,
so `port --help` is fast and a broken optional dependency breaks only its own command."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from vidport.errors import UserError

# command name -> "module:function" (a click.Command). Add a line to add a command.
COMMANDS: dict[str, tuple[str, str]] = {
    "diff-keys": ("vidport.porting.commands.diff_keys:diff_keys", "Diff two checkpoints' keys and infer the name map."),
    "convert": ("vidport.porting.commands.convert:convert",
                "Convert an official release into a Diffusers-format repo."),
    "parity": ("vidport.parity.cli:parity", "Per-layer activation parity of the native model vs a reference."),
    "generate": ("vidport.runtime.cli:generate", "Generate a video with a validated model."),
    "ssim-refs": ("vidport.parity.ssim_cli:ssim_refs", "Render and check SSIM reference videos."),
    "info": ("vidport.porting.commands.info:info", "Families, presets, attention backends that run here, versions."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name][0].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._available(name):
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vidport")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors: no progress bars, no library logs.")
@click.option("-v", "--verbose", count=True, help="More log lines (-vv: debug, libraries' too).")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, verbose: int) -> None:
    """vidport: port video diffusion models from their official release into a fast runtime,
    and prove the port is right.

    \b
    Typical flow on the embedded tiny Wan2.1 release:
      port diff-keys official_weights/wan2.1-t2v-tiny native:wan2.1-t2v-tiny
      port convert official_weights/wan2.1-t2v-tiny --family wan2.1-t2v --out converted_weights/wan2.1-t2v-tiny
      port parity wan2.1-t2v --weights converted_weights/wan2.1-t2v-tiny
      port generate converted_weights/wan2.1-t2v-tiny --prompt "a cat walks on the grass"
    The LTX-Video tiny release the same way (official_weights/ltx-video-tiny, --family ltx-video).

    `port info` lists the families, presets and attention backends; docs/cli.md the options.
    """
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose contradict each other; give one")
    ctx.obj = {"verbosity": -1 if quiet else verbose}
    configure_logging(ctx.obj["verbosity"])


def configure_logging(verbosity: int) -> None:
    """vidport's log level, and the libraries' (their warnings stay on unless --quiet; -vv shows their info)."""
    import logging
    import os

    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vidport").setLevel(level)
    library = {-1: "error", 0: "warning", 1: "warning"}.get(verbosity, "info")
    # set before diffusers/transformers are imported (each command imports them lazily)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", library)
    os.environ.setdefault("DIFFUSERS_VERBOSITY", library)


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected failures print one line and exit 2; no traceback."""
    try:
        cli.main(args=argv, prog_name="port", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # one line, like every other bad input
        where = e.ctx.command_path if e.ctx else "port"
        click.echo(f"error: {e.format_message()} (see `{where} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
