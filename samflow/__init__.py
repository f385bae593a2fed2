"""samflow: a distributed SAM-style data engine."""

__version__ = "0.1.0"
