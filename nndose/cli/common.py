"""Argument parsing and error reporting shared by every console command."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, NoReturn, Sequence

from nndose.errors import NndoseError


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors fit on one line (and typos are never swallowed)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(prog: str, body: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Run a command body; turn NndoseError into one line on stderr and exit status 2."""
    logging.basicConfig(level=os.environ.get("NNDOSE_LOGLEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        body(argv)
    except NndoseError as e:
        msg = " ".join(str(e).split("\n"))
        sys.stderr.write(f"{prog}: error: {msg}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        sys.exit(130)
