"""SAM 3's tracker (transformers `Sam3TrackerVideoModel`): the second video-propagation backend.

Same interface as `sam2.Sam2VideoRunner` (start_session / add_masks / propagate), so
`tracker.VideoTracker` drives either one with the same bounded, chunked sessions:

    video = load_sam3_tracker_video("facebook/sam3")                 # or tiny://sam3, random://sam3
    session = video.start_session(frames)                            # frames: HxWx3 uint8, one size
    video.add_masks(session, frame_idx=0, obj_ids=[1, 2], masks=m)    # m: (2, H, W) bool
    for frame_idx, obj_ids, logits in video.propagate(session): ...   # logits (N, H, W), original px

The tracker's architecture is SAM 2's (memory attention over recent frames, object pointers) on
SAM 3's ViT backbone: frames are resized to ``config.image_size`` square (1008 in facebook/sam3)
and normalised with SAM 3's mean / std (0.5). A facebook/sam3 checkpoint (a ``sam3_video``
config) loads its tracker part; the detector's weights are left out.
"""

from __future__ import annotations

from functools import partial

import torch

from samflow.models.loading.hf import HfRunner, LoadedModel
from samflow.models.loading.registry import ModelSource, build_runner
from samflow.models.sam2.runner import Sam2VideoRunner, load_tracker_weights
from samflow.models.sam3.runner import _normalisation as sam3_normalisation
from samflow.models.sam3.runner import load_gated
from samflow.models.sam3.tiny import in_code_config


class Sam3TrackerVideoRunner(Sam2VideoRunner):
    family = "sam3"

    def __init__(self, loaded: LoadedModel, uri: str, device: torch.device, dtype: torch.dtype):
        HfRunner.__init__(self, loaded, uri, device, dtype)
        self.norm = sam3_normalisation(loaded)
        self.image_size = int(self.model.config.image_size)

    @staticmethod
    def session_class() -> type:
        from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
            Sam3TrackerVideoInferenceSession,
        )

        return Sam3TrackerVideoInferenceSession


def build_video(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> Sam3TrackerVideoRunner:
    from transformers import Sam3TrackerVideoModel

    loaded = load_tracker_weights(Sam3TrackerVideoModel, partial(in_code_config, "sam3_tracker_video"), source, device, dtype, load=load_gated)
    return Sam3TrackerVideoRunner(loaded, source.uri, device, dtype)


def load_sam3_tracker_video(uri: str, *, device: str | torch.device | None = None,
                            dtype: torch.dtype | None = None) -> Sam3TrackerVideoRunner:
    """The tracker of a SAM 3 model URI (same URIs, devices, dtypes and errors as `load_model("sam3", uri)`)."""
    return build_runner(build_video, "sam3", uri, device=device, dtype=dtype)
