"""Reading a JSON file with one-line errors for a missing or malformed file."""
from __future__ import annotations

import json
from pathlib import Path

from nndose.errors import FileProblem


def read_json(path: Path | str, missing_hint: str = "") -> object:
    path = Path(path)
    if not path.is_file():
        raise FileProblem(path, f"file not found{f' ({missing_hint})' if missing_hint else ''}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileProblem(path, f"not valid JSON ({e})") from None
