"""``predictd`` — the command-line entry point. Commands live in their own small modules and
only parse options and call the library."""

from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from .. import allocator, progress
from ..errors import PredictdError

COMMANDS = ("run", "ingest", "train", "impute", "evaluate", "extend", "demo", "download",
            "list", "bench", "hub", "score", "config")


class Group(click.Group):
    """Runs commands with one error policy: a PredictdError is one line on stderr and exit 2;
    anything else is a one-line internal error (the traceback with --debug)."""

    #: options of the group that users also put after the command (`predictd run ... -q`)
    GLOBAL_FLAGS = ("-q", "--quiet", "--debug")

    def parse_args(self, ctx, args):
        if args and not args[0].startswith("-"):
            cut = args.index("--") if "--" in args else len(args)
            flags = [a for a in args[1:cut] if a in self.GLOBAL_FLAGS]
            if flags:
                args = flags + [a for a in args[:cut] if a not in self.GLOBAL_FLAGS] + args[cut:]
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PredictdError as e:
            click.echo(f"predictd: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("predictd: interrupted; re-run the same command to resume", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # the reader of stdout went away (`predictd list OUT | head`): stop quietly, as
            # Unix tools do; stdout goes to /dev/null so the exit's final flush cannot fail
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except Exception as e:  # noqa: BLE001 - the last line of defence for users
            if os.environ.get("PREDICTD_DEBUG"):
                traceback.print_exc()
            else:
                msg = str(e).strip().splitlines()
                click.echo(f"predictd: internal error: {type(e).__name__}: "
                           f"{msg[0] if msg else ''} (re-run with --debug for the traceback)",
                           err=True)
            ctx.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"],
                                          "max_content_width": 100})
@click.version_option(package_name="predictd")
@click.option("--debug", is_flag=True, help="Show full tracebacks and Spark's own logs.")
@click.option("-q", "--quiet", is_flag=True,
              help="Only warnings and errors: no progress bars or progress lines.")
def cli(debug: bool, quiet: bool):
    """Impute missing epigenomic experiments with PREDICTD's tensor model, on Spark.

    \b
    Typical use:
      predictd demo --out demo_out            # the whole pipeline on bundled Roadmap data
      predictd run --manifest tracks.tsv --genome hg38 --out s3://bucket/run1
      predictd download s3://bucket/run1 ./tracks --assay H3K27ac

    `predictd COMMAND --help` explains each command.
    """
    if debug:
        os.environ["PREDICTD_DEBUG"] = "1"
        os.environ.setdefault("PREDICTD_SPARK_LOG_LEVEL", "WARN")
    progress.set_shown(not quiet)
    allocator.configure()
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="predictd: %(message)s", stream=sys.stderr)
    # Libraries' INFO chatter ("Found credentials in environment variables.") is not ours to
    # show: it would read as predictd's own messages and bury one-line errors.
    for name in ("py4j", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main():
    from . import (bench, config_cmd, demo, download, extend, hub, score,  # noqa: F401 - registers
                   stages)
    cli(prog_name="predictd")


if __name__ == "__main__":
    main()
