"""SAM 2: images (transformers `Sam2Model`) and video propagation (`Sam2VideoModel`).

Images, same interface as `sam.SamRunner` so the mask engine can use either:

    runner = load_model("sam2", "facebook/sam2.1-hiera-large")        # or tiny://sam2
    enc = runner.encode(images)                                       # HxWx3 uint8 RGB, any sizes
    logits, iou = runner.decode(enc, [0, 1], boxes=boxes)             # (B, N, 4) xyxy original px
    masks = runner.postprocess_masks(logits[0], enc, 0) > 0           # (N, K, H, W)

SAM 2 resizes every image to image_size x image_size (no aspect-preserving pad), so prompts are
scaled per axis and masks are resized straight back to the original size. `enc.embeddings` is the
lowest-resolution feature map; the two high-resolution FPN levels the decoder also needs are
kept in `enc.high_res_features`.

Video (for propagating masks across sampled frames into tracks):

    video = load_sam2_video("facebook/sam2.1-hiera-large")           # or tiny://sam2
    session = video.start_session(frames)                            # frames: HxWx3 uint8, one size
    video.add_masks(session, frame_idx=0, obj_ids=[1, 2], masks=m)    # m: (2, H, W) bool
    for frame_idx, obj_ids, logits in video.propagate(session):       # logits (N, H, W), original px
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from samflow.models.loading.hf import (
    HfRunner,
    LoadedModel,
    build_in_code,
    load_pretrained,
    read_json,
)
from samflow.models.loading.meta_checkpoints import is_meta_file, load_meta_checkpoint
from samflow.models.loading.registry import ModelSource, build_runner
from samflow.models.sam.decoder import decode_prompts
from samflow.models.sam2.tiny import in_code_config
from samflow.models.common.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalisation,
    checked_prompts,
    resize_square,
    scale_xy,
)


@dataclass
class Sam2Encoding:
    embeddings: torch.Tensor  # (B, C, h, w) lowest-resolution image embedding, on the model device
    high_res_features: list[torch.Tensor]  # FPN levels 0 and 1, (B, C_i, h_i, w_i)
    original_sizes: list[tuple[int, int]]  # (H, W) of each input image
    input_sizes: list[tuple[int, int]]  # (image_size, image_size) for every image (square resize)

    def __len__(self) -> int:
        return len(self.original_sizes)


def _normalisation(loaded: LoadedModel) -> Normalisation:
    config = read_json(loaded.directory / "preprocessor_config.json") if loaded.directory else {}
    return Normalisation(tuple(config.get("image_mean", IMAGENET_MEAN)), tuple(config.get("image_std", IMAGENET_STD)))


def input_side(model) -> int:
    """Side of the square every image is resized to."""
    size = model.config.vision_config.backbone_config.image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


class Sam2Runner(HfRunner):
    # Set when the weights came from Meta's own checkpoint: how its keys were mapped.
    checkpoint_mapping: dict | None = None
    family = "sam2"

    def __init__(self, loaded: LoadedModel, uri: str, device: torch.device, dtype: torch.dtype):
        super().__init__(loaded, uri, device, dtype)
        self.norm = _normalisation(loaded)
        self.image_size = input_side(self.model)
        # side of the decoder's masks: four per token of the coarsest feature map
        self.low_res_size: int = 4 * int(self.model.backbone_feature_sizes[-1][0])

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray]) -> Sam2Encoding:
        if len(images) == 0:
            raise ValueError("encode needs at least one image")
        size = (self.image_size, self.image_size)
        pixels = resize_square(images, size, self.norm, self.device, self.dtype)
        levels = self.model.get_image_embeddings(pixels)
        originals = [(int(im.shape[0]), int(im.shape[1])) for im in images]
        return Sam2Encoding(levels[-1], list(levels[:-1]), originals, [size] * len(images))

    @torch.inference_mode()
    def decode(
        self,
        enc: Sam2Encoding,
        image_indices: Sequence[int],
        *,
        points: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        multimask_output: bool = True,
        image_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same contract as SamRunner.decode: (low_res_logits (B,N,K,h,w), iou (B,N,K)), float32.
        ``image_only`` is accepted for that contract; here the logits always cover the whole input
        (the square resize leaves no padding to skip).

        SAM's many-prompt decoder (samflow/models/sam/decoder.py) runs SAM 2's decoder too; a
        single mask picked by stability (``dynamic_multimask_via_stability``) goes through the
        library's decoder, which makes all four masks to choose from."""
        prompts = checked_prompts(points, boxes, len(image_indices))
        index = torch.as_tensor(list(image_indices), dtype=torch.long, device=enc.embeddings.device)
        levels = [level.index_select(0, index) for level in (*enc.high_res_features, enc.embeddings)]
        originals = [enc.original_sizes[i] for i in image_indices]
        inputs = [enc.input_sizes[i] for i in image_indices]
        scaled = scale_xy(prompts.to(self.device), originals, inputs)
        coords = scaled.unsqueeze(2) if points is not None else None
        labels = torch.ones(coords.shape[:3], dtype=torch.long, device=self.device) if coords is not None else None
        box_prompts = scaled if points is None else None
        if not multimask_output and self.model.mask_decoder.dynamic_multimask_via_stability:
            out = self.model(image_embeddings=levels, input_points=coords, input_labels=labels,
                             input_boxes=box_prompts, multimask_output=False)
            return out.pred_masks.float(), out.iou_scores.float()
        sparse, dense = self.model.prompt_encoder(
            input_points=None if coords is None else coords.to(self.dtype), input_labels=labels,
            input_boxes=None if box_prompts is None else box_prompts.to(self.dtype), input_masks=None)
        masks, iou = decode_prompts(self.model, levels[-1], sparse, dense, multimask_output, high_res=levels[:-1])
        return masks.float(), iou.float()

    @torch.inference_mode()
    def postprocess_masks(self, low_res_logits: torch.Tensor, enc: Sam2Encoding, image_index: int) -> torch.Tensor:
        """(N, K, h, w) -> (N, K, H, W) float logits at the image's original size."""
        original = enc.original_sizes[image_index]
        return F.interpolate(low_res_logits.float(), original, mode="bilinear", align_corners=False)


class Sam2VideoRunner(HfRunner):
    """Mask propagation through a clip with SAM 2's memory (one session per clip)."""

    family = "sam2"

    def __init__(self, loaded: LoadedModel, uri: str, device: torch.device, dtype: torch.dtype):
        super().__init__(loaded, uri, device, dtype)
        self.norm = _normalisation(loaded)
        self.image_size = input_side(self.model)

    @staticmethod
    def session_class() -> type:
        """The transformers inference-session class of this model (SAM 3's tracker has its own)."""
        from transformers.models.sam2_video.modeling_sam2_video import (
            Sam2VideoInferenceSession,
        )

        return Sam2VideoInferenceSession

    def start_session(self, frames: Sequence[np.ndarray]):
        """Pre-process all frames (batched, on the device) into a new inference session."""
        heights_widths = {im.shape[:2] for im in frames}
        if len(heights_widths) != 1:
            raise ValueError(f"all frames of a clip must share one size, got {sorted(heights_widths)}")
        (height, width), size = heights_widths.pop(), (self.image_size, self.image_size)
        pixels = resize_square(frames, size, self.norm, self.device, self.dtype)
        return self.session_class()(
            video=pixels, video_height=height, video_width=width, inference_device=self.device,
            inference_state_device=self.device, video_storage_device=self.device, dtype=self.dtype,
        )

    @torch.inference_mode()
    def add_masks(self, session, frame_idx: int, obj_ids: Sequence[int], masks: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Condition objects on binary masks (N, H, W) in frame `frame_idx`; returns that frame's
        mask logits (N, H, W) at the original size."""
        masks = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks)
        if masks.dim() != 3 or masks.shape[0] != len(obj_ids):
            raise ValueError(f"masks must be (N={len(obj_ids)}, H, W); got {tuple(masks.shape)}")
        size = (self.image_size, self.image_size)
        resized = F.interpolate(masks[:, None].float().to(self.device), size=size, mode="bilinear",
                                align_corners=False, antialias=True) >= 0.5
        for obj_id, mask in zip(obj_ids, resized):
            obj_idx = session.obj_id_to_idx(int(obj_id))
            session.add_mask_inputs(obj_idx, frame_idx, mask[None].float())
            session.remove_point_inputs(obj_idx, frame_idx)
        session.obj_with_new_inputs = [int(i) for i in obj_ids]
        out = self.model(inference_session=session, frame_idx=frame_idx)
        return self._to_original(out.pred_masks, session)

    @torch.inference_mode()
    def propagate(self, session, start_frame: int | None = None, max_frames: int | None = None,
                  reverse: bool = False) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """Yield (frame_idx, obj_ids, mask logits (N, H, W) at the original size) per frame."""
        for out in self.model.propagate_in_video_iterator(
            session, start_frame_idx=start_frame, max_frame_num_to_track=max_frames, reverse=reverse
        ):
            yield out.frame_idx, list(out.object_ids), self._to_original(out.pred_masks, session)

    @staticmethod
    def _to_original(pred_masks: torch.Tensor, session) -> torch.Tensor:
        size = (session.video_height, session.video_width)
        return F.interpolate(pred_masks.float(), size, mode="bilinear", align_corners=False)[:, 0]


def build(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> Sam2Runner:
    from transformers import Sam2Model

    if source.in_code:
        loaded = build_in_code(Sam2Model, in_code_config("sam2", source.kind), device, dtype)
    elif source.kind == "local" and is_meta_file(source.location):  # Meta's own .pth / .pt
        loaded, report = load_meta_checkpoint("sam2", source.location, device, dtype)
        runner = Sam2Runner(loaded, source.uri, device, dtype)
        runner.checkpoint_mapping = report.as_dict()
        return runner
    else:
        loaded = load_pretrained(Sam2Model, source, device, dtype)
    return Sam2Runner(loaded, source.uri, device, dtype)


def load_tracker_weights(model_class, in_code_config: Callable[[str], Any], source: ModelSource,
                         device: torch.device, dtype: torch.dtype, load=load_pretrained) -> LoadedModel:
    """A video tracker's weights: built in code from `in_code_config(kind)` (tiny / random, objects
    always present) or loaded by ``load`` (a family may wrap `load_pretrained`, e.g. SAM 3's gated
    Hub hint)."""
    if source.in_code:
        loaded = build_in_code(model_class, in_code_config(source.kind), device, dtype)
        objects_always_present(loaded.model)
        return loaded
    return load(model_class, source, device, dtype)


def build_video(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> Sam2VideoRunner:
    from transformers import Sam2VideoModel

    loaded = load_tracker_weights(Sam2VideoModel, partial(in_code_config, "sam2_video"), source, device, dtype)
    return Sam2VideoRunner(loaded, source.uri, device, dtype)


# Logit of the object-presence head of in-code video models: far above the random part's O(1).
_PRESENT_LOGIT = 10.0


def objects_always_present(model: torch.nn.Module) -> None:
    """In-code (tiny / random) video models only: set the object-presence head's output bias high.
    A random head declares every object gone after a frame or two, at random, and tracking then
    stops until the next seed; this way tests and benches propagate every object on every frame,
    as a trained tracker does while its objects stay in view."""
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(_PRESENT_LOGIT)


def load_sam2_video(uri: str, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> Sam2VideoRunner:
    """The video counterpart of `load_model("sam2", uri)` (same URIs, devices, dtypes, errors)."""
    return build_runner(build_video, "sam2", uri, device=device, dtype=dtype)
