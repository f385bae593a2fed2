"""The video-propagation backend of a model URI, chosen by the URI's family.

    video = load_video_model("facebook/sam2.1-hiera-small")   # SAM 2 / 2.1: Sam2VideoModel
    video = load_video_model("facebook/sam3")                 # SAM 3: Sam3TrackerVideoModel
    video = load_video_model("tiny://sam3")                   # tiny://sam2, random://sam2|sam3 too

The family comes from the URI (``tiny://<family>``, ``random://<family>``), else from the model's
config.json ``model_type`` (sam2, sam2_video; sam3, sam3_video, sam3_tracker_video), as
``samflow models check`` reads it. Both backends have one interface (`tracker.VideoPropagator`).
"""

from __future__ import annotations

import torch

from samflow.models.loading.registry import ModelLoadError

VIDEO_FAMILIES = ("sam2", "sam3")


def video_family(uri: str) -> str:
    from samflow.models.loading.check import infer_family

    family = infer_family(uri)
    if family not in VIDEO_FAMILIES:
        raise ModelLoadError(
            f"{uri} is a {family!r} model; video tracking needs a SAM 2 / 2.1 or SAM 3 model "
            f"(e.g. facebook/sam2.1-hiera-small, facebook/sam3, tiny://sam2, tiny://sam3)"
        )
    return family


def load_video_model(uri: str, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """A `Sam2VideoRunner` or `Sam3TrackerVideoRunner` for ``uri``; ModelLoadError when it is neither."""
    if video_family(uri) == "sam3":
        from samflow.models.sam3.tracker import load_sam3_tracker_video

        return load_sam3_tracker_video(uri, device=device, dtype=dtype)
    from samflow.models.sam2.runner import load_sam2_video

    return load_sam2_video(uri, device=device, dtype=dtype)
