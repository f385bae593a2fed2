"""Automatic mask generation (SAM's data engine), batched and device-resident."""

from samflow.models.amg.generator import MaskGenerator
from samflow.models.amg.params import AmgParams

__all__ = ["AmgParams", "MaskGenerator"]
