"""The prompt of a generated image: its masks' labels in the config's template."""

from __future__ import annotations

from collections.abc import Sequence


def label_text(labels: Sequence[str | None]) -> str:
    """Distinct labels in their masks' order, comma-separated ("" when none has one)."""
    seen: dict[str, None] = {}
    for label in labels:
        name = " ".join((label or "").split())
        if name:
            seen.setdefault(name, None)
    return ", ".join(seen)


def build_prompt(labels: Sequence[str | None], template: str, without_labels: str) -> str:
    """``template`` with ``{labels}`` filled in, or ``without_labels`` when no mask has a label
    (a template without ``{labels}`` is used as it is)."""
    text = label_text(labels)
    if "{labels}" in template and not text:
        return without_labels
    return template.format(labels=text)
