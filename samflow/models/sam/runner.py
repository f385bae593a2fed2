"""SAM (transformers `SamModel`): batched image encoding, batched prompt decoding.

    runner = load_model("sam", "facebook/sam-vit-huge")        # or "tiny://sam"
    enc = runner.encode(images)                                 # list of HxWx3 uint8 RGB, any sizes
    logits, iou = runner.decode(enc, [0, 1], points=pts)        # pts (2, N, 2) xy, original pixels
    masks = runner.postprocess_masks(logits[0], enc, 0) > 0     # (N, K, H, W) at the original size

The image encoder runs once per image; prompts for many images are decoded in one call against
the cached embeddings. Coordinates in and masks out are in each image's original pixel frame;
the resize/pad frame of the model (`image_size`, longest side, bottom-right padding) stays inside.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from samflow.models.loading.registry import ModelSource
from samflow.models.common.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalisation,
    checked_prompts,
    resize_longest_pad,
    scale_xy,
)
from samflow.models.sam.decoder import decode_prompts


@dataclass
class SamEncoding:
    embeddings: torch.Tensor  # (B, C, h, w) on the model device
    original_sizes: list[tuple[int, int]]  # (H, W) of each input image
    input_sizes: list[tuple[int, int]]  # (h, w) after resizing the longest side, before padding

    def __len__(self) -> int:
        return len(self.original_sizes)


class SamRunner(HfRunner):
    family = "sam"
    # Set when the weights came from Meta's own checkpoint: how its keys were mapped.
    checkpoint_mapping: dict | None = None

    def __init__(self, loaded: LoadedModel, uri: str, device: torch.device, dtype: torch.dtype, norm: Normalisation):
        super().__init__(loaded, uri, device, dtype)
        vision = self.model.config.vision_config
        self.image_size: int = int(vision.image_size)
        self.low_res_size: int = 4 * (self.image_size // int(vision.patch_size))  # side of the decoder's masks
        self.norm = norm

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray]) -> SamEncoding:
        if len(images) == 0:
            raise ValueError("encode needs at least one image")
        pixels, originals, inputs = resize_longest_pad(images, self.image_size, self.norm, self.device, self.dtype)
        embeddings = self.model.get_image_embeddings(pixels)
        return SamEncoding(embeddings, originals, inputs)

    @torch.inference_mode()
    def decode(
        self,
        enc: SamEncoding,
        image_indices: Sequence[int],
        *,
        points: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        multimask_output: bool = True,
        image_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts (B, N, 2) points or (B, N, 4) xyxy boxes in original pixels, B = len(image_indices).

        Returns (low_res_logits (B, N, K, h_lr, w_lr) float32, iou_predictions (B, N, K) float32).
        ``image_only``: the logits may cover only the top-left part that `postprocess_masks` reads
        for these images (the rest lies under the padding): h_lr, w_lr are then smaller, and the
        decoder's upscaling skips the rest. For callers that only post-process the logits.
        """
        prompts = checked_prompts(points, boxes, len(image_indices))
        index = torch.as_tensor(list(image_indices), dtype=torch.long, device=enc.embeddings.device)
        embeddings = enc.embeddings.index_select(0, index)
        originals = [enc.original_sizes[i] for i in image_indices]
        inputs = [enc.input_sizes[i] for i in image_indices]
        scaled = scale_xy(prompts.to(self.device), originals, inputs)
        if points is not None:
            coords = scaled.unsqueeze(2)  # one positive point per mask prompt
            labels = torch.ones(coords.shape[:3], dtype=torch.long, device=self.device)
            sparse, dense = self.model.prompt_encoder(input_points=coords.to(self.dtype), input_labels=labels,
                                                      input_boxes=None, input_masks=None)
        else:
            sparse, dense = self.model.prompt_encoder(input_points=None, input_labels=None,
                                                      input_boxes=scaled.to(self.dtype), input_masks=None)
        # the model's own decoder maths, without one copy of the image per prompt (sam_decoder)
        region = self._image_tokens(enc, image_indices, embeddings.shape[-2:]) if image_only else None
        masks, iou = decode_prompts(self.model, embeddings, sparse, dense, multimask_output, region=region)
        return masks.float(), iou.float()

    def _image_tokens(self, enc: SamEncoding, image_indices: Sequence[int], grid: torch.Size) -> tuple[int, int]:
        """(rows, cols) of image tokens whose mask pixels `postprocess_masks` reads, over these images."""
        needed = [
            tuple(self._low_res_needed(4 * grid[axis], enc.input_sizes[i][axis], enc.original_sizes[i][axis])
                  for axis in (0, 1))
            for i in image_indices
        ]
        return tuple(-(-max(n[axis] for n in needed) // 4) for axis in (0, 1))

    def _low_res_needed(self, low_res: int, valid: int, out: int) -> int:
        """How many leading low-res pixels an axis' resize reads (one past its last nonzero weight)."""
        key = (low_res, valid, out)
        cache = self.__dict__.setdefault("_low_res_needed_cache", {})
        if key not in cache:
            weights = self._resize_matrix(low_res, valid, out)
            cache[key] = int(weights.abs().sum(dim=0).nonzero().max()) + 1
        return cache[key]

    @torch.inference_mode()
    def postprocess_masks(self, low_res_logits: torch.Tensor, enc: SamEncoding, image_index: int) -> torch.Tensor:
        """(N, K, h_lr, w_lr) -> (N, K, H, W) float logits at the image's original size.

        SAM's two bilinear resizes: low-res -> padded model input, crop the padding, -> original
        size. For images smaller than the model input (the common case) both are composed into
        one linear map per axis and applied as two matmuls, so no model-size intermediate is
        built: 2-3x faster on CPU, same values up to float rounding (the composed weights are
        exact in float64, where F.interpolate rounds its source positions in float32).

        The matmul path returns its logits as a transposed view, column-major in memory (each
        mask stored (W, H)): the order COCO RLE reads pixels in, so encoding the thresholded
        masks needs no transposing copy. Values and shape are as any other (N, K, H, W) tensor."""
        n, k, h_lr, w_lr = low_res_logits.shape
        original = enc.original_sizes[image_index]
        h, w = enc.input_sizes[image_index]
        full = self.low_res_size
        if original[0] * original[1] >= h * w:  # not smaller than the model input: resize twice
            # Pixels (W, H) so the result is column-major too. Only the part of the first resize
            # that the crop keeps is made: with the model's scale factor, the low-res pixels
            # given (all, or the image's part from decode(image_only=True)) map as in the whole.
            flat = low_res_logits.float().reshape(n * k, 1, h_lr, w_lr).transpose(2, 3)
            scale = self.image_size / full
            by_column = F.interpolate(flat, scale_factor=scale, mode="bilinear", align_corners=False)[..., :w, :h]
            if (h, w) != tuple(original):  # an image the size of the model input needs no second resize
                by_column = F.interpolate(by_column, (original[1], original[0]), mode="bilinear", align_corners=False)
            return by_column.reshape(n, k, original[1], original[0]).transpose(2, 3)
        rows = self._resize_matrix(full, h, original[0])[:, :h_lr]
        cols = self._resize_matrix(full, w, original[1])[:, :w_lr]
        flat = low_res_logits.float().reshape(n * k, h_lr, w_lr)
        by_column = torch.matmul(cols, torch.matmul(rows, flat).transpose(1, 2))  # (N * K, W, H)
        return by_column.view(n, k, original[1], original[0]).transpose(2, 3)

    def _resize_matrix(self, low_res: int, valid: int, out: int) -> torch.Tensor:
        key = (low_res, valid, out)
        cache = self.__dict__.setdefault("_resize_matrices", {})
        if key not in cache:
            cache[key] = resize_matrix(low_res, self.image_size, valid, out).to(self.device, torch.float32)
        return cache[key]


def _interp_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of 1-D linear interpolation (align_corners=False): the
    per-axis factor of F.interpolate(mode="bilinear")."""
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0, :].t()


def resize_matrix(low_res: int, model_size: int, valid: int, out: int) -> torch.Tensor:
    """One axis of SAM's mask resize as a matrix (out, low_res): low_res -> model_size, keep
    the first ``valid`` (the rest is padding), -> out."""
    return _interp_matrix(valid, out) @ _interp_matrix(low_res, model_size)[:valid]


def _normalisation(loaded: LoadedModel) -> Normalisation:
    config = read_json(loaded.directory / "preprocessor_config.json") if loaded.directory else {}
    return Normalisation(tuple(config.get("image_mean", IMAGENET_MEAN)), tuple(config.get("image_std", IMAGENET_STD)))


def build(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> SamRunner:
    from transformers import SamModel

    if source.in_code:
        from samflow.models.sam.tiny import in_code_config

        loaded = build_in_code(SamModel, in_code_config("sam", source.kind), device, dtype)
    elif source.kind == "local" and is_meta_file(source.location):  # Meta's own .pth / .pt
        loaded, report = load_meta_checkpoint("sam", source.location, device, dtype)
        runner = SamRunner(loaded, source.uri, device, dtype, _normalisation(loaded))
        runner.checkpoint_mapping = report.as_dict()
        return runner
    else:
        loaded = load_pretrained(SamModel, source, device, dtype)
    return SamRunner(loaded, source.uri, device, dtype, _normalisation(loaded))
