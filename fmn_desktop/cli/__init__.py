"""`fmn`: forget and correct concepts in Stable Diffusion checkpoints, headless.

Exit status: 0 on success, 2 on a usage error, 1 on any other error, 130 when interrupted
(143 on SIGTERM). Every error prints one line on stderr, operating-system errors (a full
disk, a folder that cannot be written) included; a traceback only with `--debug` or
`FMN_DEBUG=1`. Each command group is a module of this package with `add_parsers(sub)`;
every sub-parser names its handler (`set_defaults(handler=...)`), and every handler only
parses, calls `fmn_desktop.services` and prints.

Start-up stays under half a second of CPU: building the parser imports no torch (the config
dataclasses live in torch-free modules, `fmn_desktop.lazy`), and commands that never touch a
tensor (`inspect`, `patches list`, ...) say so with `set_defaults(torch_free=True)`, so that
torch is not imported just to set its thread count.
"""

from __future__ import annotations

import argparse
import os
import sys

from fmn_desktop import __version__
from fmn_desktop.cli import app, apply, correct, evaluate, forget, library
from fmn_desktop.cli.common import UsageError, safe, thread_count
from fmn_desktop.errors import FmnError
from fmn_desktop.runtime import configure_runtime
from fmn_desktop.services.output import OutputPathError

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
        type=thread_count,
        default=None,
        help="torch CPU threads (default: FMN_THREADS or min(4, cores))",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of an error too (or set FMN_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def debug_wanted(args=None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("FMN_DEBUG", "") not in (
        "",
        "0",
    )


def os_error_text(exc: OSError) -> str:
    """One line for an operating-system error: what failed, and on which path."""
    what = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p]
    return f"{what}: {' -> '.join(paths)}" if paths else what


_PARSER: argparse.ArgumentParser | None = None


def main(argv: list[str] | None = None) -> int:
    configure_runtime()
    global _PARSER
    if _PARSER is None:  # built once per process: callers in-process run many commands
        _PARSER = build_parser()
    args = _PARSER.parse_args(argv)
    import warnings

    from fmn_desktop.fileio import Terminated, terminate_as_exception
    from fmn_desktop.runtime import set_threads

    # Library deprecation chatter (scheduler configs of old checkpoints) is not the user's concern.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    debug = debug_wanted(args)

    def fail(code: int, text: str) -> int:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"fmn {args.command}: {text}", file=sys.stderr)
        return code

    try:
        with terminate_as_exception():  # SIGTERM unwinds like Ctrl-C: temporaries go
            if not getattr(args, "torch_free", False):
                set_threads(args.threads)
            code = args.handler(args)
            sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
            return code
    except (UsageError, OutputPathError) as exc:  # a bad argument, or --out without --overwrite
        return fail(2, f"error: {safe(exc)}")
    except (FmnError, ValueError) as exc:
        return fail(1, f"error: {safe(exc)}")
    except KeyboardInterrupt:
        return fail(130, "interrupted; nothing was written")
    except Terminated as exc:
        return fail(128 + exc.signum, "terminated; nothing was written")
    except BrokenPipeError:
        # The reader went away (`fmn inspect ... | head`): not an error of ours. Point stdout
        # at /dev/null so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        return fail(1, f"error: {safe(os_error_text(exc))}")
    except MemoryError:
        return fail(1, "error: out of memory")
    except Exception as exc:  # a bug of ours: one line, the traceback with --debug
        return fail(
            1,
            f"internal error: {type(exc).__name__}: {safe(exc)} (run with --debug for details)",
        )


def gui_main(threads: int | None = None) -> int:
    """`fmn-desktop`: the desktop app."""
    return app.gui_main(threads)


if __name__ == "__main__":
    sys.exit(main())
