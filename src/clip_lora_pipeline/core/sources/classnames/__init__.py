"""Human-readable class names for sources whose files carry only numbers or codes."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path


@cache
def load_class_names(source: str) -> list[str]:
    return json.loads((Path(__file__).parent / f"{source}.json").read_text())
