"""Quality of a run's masks against ground truth (``samflow eval``)."""

RUN_GT = "run"  # ``--gt run``: the run's own ground truth (SA-1B sidecars, imported reviews)
