"""Input formats and the plan. The format names are declared once, in ``formats``."""

from samflow.inputs.formats import INPUT_FORMATS

__all__ = ["INPUT_FORMATS"]
