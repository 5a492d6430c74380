"""`fmn`: forget and correct concepts in Stable Diffusion checkpoints, headless.

Exit status: 0 on success, 2 on a usage error, 1 on any other error (user errors print one
line, no traceback). Each command group is a module of this package with `add_parsers(sub)`;
every sub-parser names its handler (`set_defaults(handler=...)`), and every handler only
parses, calls `fmn_desktop.services` and prints.
"""

from __future__ import annotations

import argparse
import sys

from fmn_desktop import __version__
from fmn_desktop.cli import app, apply, correct, evaluate, forget, library
from fmn_desktop.cli.common import UsageError
from fmn_desktop.errors import FmnError
from fmn_desktop.runtime import configure_runtime

GROUPS = (forget, correct, apply, evaluate, library, app)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmn",
        description=(__doc__ or "").splitlines()[0],
        epilog="Run `fmn demo` for a two-minute tour on the embedded model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: FMN_THREADS or min(4, cores))",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_runtime()
    parser = build_parser()
    args = parser.parse_args(argv)
    import warnings

    from fmn_desktop.runtime import set_threads

    # Library deprecation chatter (scheduler configs of old checkpoints) is not the user's concern.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    set_threads(args.threads)
    try:
        code = args.handler(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
        return code
    except UsageError as exc:
        print(f"fmn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FmnError, ValueError) as exc:
        print(f"fmn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`fmn inspect ... | head`): not an error of ours. Point stdout
        # at /dev/null so that the interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def gui_main(threads: int | None = None) -> int:
    """`fmn-desktop`: the desktop app."""
    return app.gui_main(threads)


if __name__ == "__main__":
    sys.exit(main())
