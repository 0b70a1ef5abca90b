"""Argument parsing and error reporting shared by every console command."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import Callable, NoReturn, Sequence

from nndose.errors import NndoseError


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors fit on one line (and typos are never swallowed)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _fail(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())}\n")
    sys.exit(2)


def run_cli(prog: str, body: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Run a command body; turn NndoseError, and the operating system's refusals (a full disk, a
    read-only or missing folder, no permission), into one line on stderr and exit status 2."""
    logging.basicConfig(level=os.environ.get("NNDOSE_LOGLEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        body(argv)
    except NndoseError as e:
        _fail(prog, str(e))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        full = " (no space left on the device: free some space and run again)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        _fail(prog, f"{where}{e.strerror or e}{full}")
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        sys.exit(130)


FOLDS_HELP = "folds to ensemble, each once (default: the trained folds 0-4, or 'all' when the model has only that)"


def add_model_options(ap: argparse.ArgumentParser, folds_help: str = FOLDS_HELP,
                      checkpoint_help: str = "checkpoint file name") -> None:
    """-d, -c, -f, -tr, -p, -chk: which trained model a command uses (one owner of their names and defaults)."""
    from nndose.io.layout import CHECKPOINT_FINAL
    ap.add_argument("-d", required=True, help="dataset id of the trained model")
    ap.add_argument("-c", required=True, help="configuration")
    ap.add_argument("-f", nargs="+", help=folds_help)
    ap.add_argument("-tr", default="nndoseTrainer", help="trainer class (default nndoseTrainer)")
    ap.add_argument("-p", default="nndosePlans", help="plans name (default nndosePlans)")
    ap.add_argument("-chk", default=CHECKPOINT_FINAL, help=checkpoint_help)
