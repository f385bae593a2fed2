"""Reading the `samflow annotate` summary that scripts rely on from a CLI run's stdout."""

from __future__ import annotations

import json


def summary_of(stdout: str) -> dict:
    """The CLI's JSON summary on stdout (Ray may print a line of its own before or after it)."""
    return json.JSONDecoder().raw_decode(stdout[stdout.rindex('{\n "run_id"'):])[0]
