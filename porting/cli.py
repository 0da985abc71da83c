"""The `port` command. Each subcommand lives in its own module and is imported only when used,
so `port --help` is fast and a broken optional dependency breaks only its own command."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click
from vidport.porting.errors import UserError

# command name -> "module:function" (a click.Command). Add a line to add a command.
COMMANDS: dict[str, tuple[str, str]] = {
    "diff-keys": ("vidport.porting.commands.diff_keys:diff_keys", "Diff two checkpoints' keys and infer the name map."),
    "convert": ("vidport.porting.commands.convert:convert",
                "Convert an official release into a Diffusers-format repo."),
    "parity": ("vidport.parity.cli:parity", "Per-layer activation parity of the native model vs a reference."),
    "generate": ("vidport.runtime.cli:generate", "Generate a video with a validated model."),
    "ssim-refs": ("vidport.parity.ssim_cli:ssim_refs", "Render and check SSIM reference videos."),
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
def cli() -> None:
    """vidport: port video diffusion models from their official release into a fast runtime,
    and prove the port is right.

    \b
    Typical flow on the embedded tiny Wan2.1 release:
      port diff-keys official_weights/wan2.1-t2v-tiny native:wan2.1-t2v-tiny
      port convert official_weights/wan2.1-t2v-tiny --family wan2.1-t2v --out converted_weights/wan2.1-t2v-tiny
      port parity wan2.1-t2v --weights converted_weights/wan2.1-t2v-tiny
      port generate converted_weights/wan2.1-t2v-tiny --prompt "a cat walks on the grass"
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected failures print one line and exit 2; no traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
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
