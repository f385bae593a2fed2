"""The real-time DETR family (transformers RT-DETR, RT-DETR v2, D-FINE): closed-set boxes with the
checkpoint's class names (`config.id2label`).

    runner = load_model("detr", "PekingU/rtdetr_v2_r18vd")      # or ustc-community/dfine-*, tiny://detr
    for det in runner.detect(images, threshold=0.5):
        det.boxes, det.scores, det.labels                       # xyxy px of the original image

Pre-processing follows the checkpoints' processors: resize to the processor's size (640x640,
aspect ignored), scale to [0, 1], normalise only when the processor says so. The heads predict
sigmoid class scores per query and boxes as cxcywh normalised to the image, so a box maps back to
the original pixels by multiplying with (W, H); each query keeps its best class. Every image is
resized to the same input size, so a batch gives what single calls give.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from samflow.models.common.boxes import cxcywh_to_xyxy
from samflow.models.detectors.detection import Detections, finish
from samflow.models.loading.hf import (
    HfRunner,
    LoadedModel,
    build_in_code,
    load_pretrained,
    read_json,
)
from samflow.models.loading.registry import ModelLoadError, ModelSource
from samflow.models.common.preprocess import Normalisation, resize_square

DEFAULT_SIZE = 640
UNIT = Normalisation((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
# config.json model_type -> transformers class name
_CLASSES = {
    "rt_detr": "RTDetrForObjectDetection",
    "rt_detr_v2": "RTDetrV2ForObjectDetection",
    "d_fine": "DFineForObjectDetection",
}


class DetrRunner(HfRunner):
    family = "detr"

    def __init__(self, loaded: LoadedModel, uri: str, device: torch.device, dtype: torch.dtype,
                 size: tuple[int, int], norm: Normalisation) -> None:
        super().__init__(loaded, uri, device, dtype)
        self.size = size
        self.norm = norm
        id2label = self.model.config.id2label
        self.classes = [str(id2label.get(i, f"class_{i}")) for i in range(len(id2label))]

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], threshold: float = 0.5, max_boxes: int = 100,
               nms_iou: float = 0.7) -> list[Detections]:
        if len(images) == 0:
            return []
        pixels = resize_square(images, self.size, self.norm, self.device, self.dtype)
        out = self.model(pixel_values=pixels)
        scores, class_ids = out.logits.float().sigmoid().max(dim=-1)
        boxes = cxcywh_to_xyxy(out.pred_boxes.float())
        results = []
        for i, image in enumerate(images):
            height, width = image.shape[:2]
            scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
            results.append(finish(boxes[i] * scale, scores[i], class_ids[i], self.classes, (height, width),
                                  threshold, nms_iou, max_boxes))
        return results


def _processor_size(directory) -> tuple[tuple[int, int], Normalisation]:
    config = read_json(directory / "preprocessor_config.json") if directory else {}
    size = config.get("size") or {}
    height = int(size.get("height", size.get("shortest_edge", DEFAULT_SIZE))) if isinstance(size, dict) else int(size)
    width = int(size.get("width", height)) if isinstance(size, dict) else int(size)
    norm = UNIT
    if config.get("do_normalize"):
        norm = Normalisation(tuple(config["image_mean"]), tuple(config["image_std"]))
    return (height, width), norm


def model_class(model_type: str):
    import transformers

    if model_type not in _CLASSES:
        raise ModelLoadError(f"model_type {model_type!r} is not a real-time DETR ({', '.join(_CLASSES)})")
    return getattr(transformers, _CLASSES[model_type])


def build(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> DetrRunner:
    if source.in_code:
        from samflow.models.detectors.tiny import in_code_config

        config = in_code_config("detr", source.kind)
        loaded = build_in_code(model_class(config.model_type), config, device, dtype)
        size = (64, 64) if source.kind == "tiny" else (DEFAULT_SIZE, DEFAULT_SIZE)
        return DetrRunner(loaded, source.uri, device, dtype, size, UNIT)
    from samflow.models.loading.hf import local_model_dir

    directory = local_model_dir(source)
    model_type = read_json(directory / "config.json").get("model_type", "")
    loaded = load_pretrained(model_class(model_type), source, device, dtype)
    size, norm = _processor_size(loaded.directory)
    return DetrRunner(loaded, source.uri, device, dtype, size, norm)
