"""samflow: a distributed SAM-style data engine."""
