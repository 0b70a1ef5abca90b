"""Fixed points where a test can kill the process, to show that a kill at the worst moment loses
nothing and leaves nothing half-written. Set the environment variable nndose_kill_at to a point's
name and the process sends itself SIGKILL when it gets there; unset, `kill_point` does nothing."""
from __future__ import annotations

import os
import signal

POINTS = ("plan_and_preprocess:data_published", "predict:case_staged", "install:extracted", "convert:cases_staged")


def kill_point(name: str) -> None:
    assert name in POINTS, name
    if os.environ.get("nndose_kill_at") == name:
        os.kill(os.getpid(), signal.SIGKILL)
