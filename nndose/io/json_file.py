"""Reading a JSON file with one-line errors for a missing or malformed file."""
from __future__ import annotations

import json
from pathlib import Path

from nndose.errors import NndoseError


def read_json(path: Path | str, missing_hint: str = "") -> object:
    path = Path(path)
    if not path.is_file():
        raise NndoseError(f"{path}: file not found{f' ({missing_hint})' if missing_hint else ''}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NndoseError(f"{path}: not valid JSON ({e})") from None
