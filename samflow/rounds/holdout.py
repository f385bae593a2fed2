"""Whether a held-out split can score a round: before Prefect and Ray start, in one short read."""

from __future__ import annotations

import tarfile

from samflow.config import RunConfig
from samflow.inputs.formats import TAR_SUFFIXES
from samflow.inputs.webdataset import SIDECAR_SUFFIX
from samflow.store.storage import list_files, open_file


def config_problem(cfg: RunConfig) -> str | None:
    """Why a round under ``cfg`` could never be scored, or None."""
    if not cfg.input.sa1b_ground_truth:
        return ("a round scores HOLDOUT against its own ground truth: set input.sa1b_ground_truth=true "
                "(SA-1B sidecars in its tars)")
    return None


def ground_truth_problem(holdout: str, cfg: RunConfig) -> str | None:
    """Why ``holdout`` cannot score a round, or None. Its ground truth is SA-1B sidecars in its
    tars, so it needs a tar whose samples carry them; only the first tar's headers are read, up
    to its first sidecar."""
    problem = config_problem(cfg)
    if problem:
        return problem
    try:
        files = list_files(holdout, cfg.storage, cfg.input.include, cfg.input.exclude)
    except FileNotFoundError:
        return f"held-out split not found: {holdout}"
    tars = [uri for uri, _ in files if uri.lower().endswith(TAR_SUFFIXES)]
    if not tars:
        return f"{holdout} holds no tar shards: a held-out split is SA-1B-style tars, each image with its {SIDECAR_SUFFIX}"
    with open_file(tars[0], cfg.storage) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
        if any(member.isfile() and member.name.lower().endswith(SIDECAR_SUFFIX) for member in tar):
            return None
    return f"{tars[0]} has no {SIDECAR_SUFFIX} sidecars: the held-out images carry no ground truth to score"
