"""``predictd config`` — show the keys, check a config file, or print the keys' reference."""

from __future__ import annotations

import click

from .. import config as config_mod
from .main import cli


@cli.command(name="config")
@click.option("--show", is_flag=True, help="Print every key with its default and meaning as "
                                           "TOML (a starting point for your own file).")
@click.option("--check", "check_path", metavar="FILE.toml", help="Validate a config file.")
@click.option("--markdown", is_flag=True, help="Print the keys' reference as Markdown "
                                               "(docs/configuration.md is this output).")
def config_command(show, check_path, markdown):
    """Show the configuration keys, check a config file, or print their Markdown reference."""
    if markdown:
        click.echo(config_mod.config_reference_markdown(), nl=False)
    elif check_path:
        cfg = config_mod.load(check_path)
        click.echo(f"{check_path}: ok")
        click.echo(config_mod.to_toml(cfg), nl=False)
    else:
        click.echo(config_mod.to_toml(config_mod.Config()), nl=False)
