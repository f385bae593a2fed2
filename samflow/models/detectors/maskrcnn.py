"""Mask R-CNN (torchvision): closed-set boxes with class names and their own instance masks.

    runner = load_model("maskrcnn", "torchvision://maskrcnn_resnet50_fpn_v2")   # or tiny://maskrcnn
    for det in runner.detect(images, threshold=0.5):
        det.boxes, det.scores, det.labels, det.masks        # xyxy px of the original image, bool masks

URIs: `torchvision://<builder>` loads torchvision's published weights for that builder (COCO class
names from the weights' metadata; the weights download through torch's hub cache);
`tiny://maskrcnn` and `random://maskrcnn` are built in code; a user checkpoint is a folder holding
`config.json` (`{"model_type": "maskrcnn", "architecture": "maskrcnn_resnet50_fpn_v2" | "tiny",
"classes": [...names without background...]}`) and one weight file, or a bare state-dict file of
the v2 architecture (class count from its predictor; COCO names when it has 91). Weights are read
safely (safetensors or `torch.load(weights_only=True)`).

torchvision resizes and pads a list of images to one batch internally and pads with zeros, so
images of different sizes see different padding; `detect` therefore batches images of one size
together, which makes a batch give exactly what single calls give.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from samflow.models.detectors.detection import Detections, finish
from samflow.models.loading.checkpoint import (
    UnsafeCheckpointError,
    read_state_dict,
    sha256_file,
    sha256_state_dict,
    weight_files,
)
from samflow.models.loading.registry import ModelLoadError, ModelSource
from samflow.models.common.preprocess import to_device

DEFAULT_ARCH = "maskrcnn_resnet50_fpn_v2"
TINY_CLASSES = ("cat", "dog", "bird")
TINY_SEED = 0
MASK_THRESHOLD = 0.5


class MaskRcnnRunner:
    family = "maskrcnn"

    def __init__(self, model: nn.Module, classes: Sequence[str], uri: str, device: torch.device,
                 dtype: torch.dtype, checkpoint_sha256: str | None) -> None:
        self.model = model
        self.classes = list(classes)  # index 0 is background in torchvision's label ids
        self.uri = uri
        self.device = device
        self.dtype = dtype
        self.checkpoint_sha256 = checkpoint_sha256
        self.num_parameters = sum(p.numel() for p in model.parameters())

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], threshold: float = 0.5, max_boxes: int = 100,
               nms_iou: float = 0.5, with_masks: bool = True) -> list[Detections]:
        """Per image: boxes, scores, class names and (with_masks) (N,H,W) bool masks."""
        heads = self.model.roi_heads
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img = threshold, nms_iou, max_boxes
        names = ["__background__", *self.classes]
        results: list[Detections | None] = [None] * len(images)
        for indices in _same_size_groups(images).values():
            tensors = [t.div(255.0).to(self.dtype) for t in to_device([images[i] for i in indices], self.device)]
            for i, out in zip(indices, self.model(tensors)):
                masks = out["masks"][:, 0] >= MASK_THRESHOLD if with_masks and "masks" in out else None
                results[i] = finish(out["boxes"], out["scores"], out["labels"], names, images[i].shape[:2],
                                    threshold, nms_iou, max_boxes, masks)
        return results  # type: ignore[return-value]


def _same_size_groups(images: Sequence[np.ndarray]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        groups[image.shape].append(i)
    return groups


class TinyBackbone(nn.Sequential):
    """Three strided convs, stride 8, 32 channels: enough for Mask R-CNN's heads at 64 px."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.out_channels = channels


def build_architecture(arch: str, num_classes: int) -> nn.Module:
    """An untrained Mask R-CNN; `num_classes` counts the background class."""
    from torchvision.models import detection

    if arch == "tiny":
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import (
            FastRCNNPredictor,
            TwoMLPHead,
        )
        from torchvision.models.detection.mask_rcnn import (
            MaskRCNNHeads,
            MaskRCNNPredictor,
        )
        from torchvision.ops import MultiScaleRoIAlign

        width = 32
        return detection.MaskRCNN(
            TinyBackbone(width), num_classes=None, min_size=64, max_size=128,
            rpn_anchor_generator=AnchorGenerator(((8, 16, 32),), ((0.5, 1.0, 2.0),)),
            box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), box_head=TwoMLPHead(width * 49, 64),
            box_predictor=FastRCNNPredictor(64, num_classes),
            mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2), mask_head=MaskRCNNHeads(width, [32, 32], 1),
            mask_predictor=MaskRCNNPredictor(32, 32, num_classes),
        )
    builder = getattr(detection, arch, None)
    if builder is None or not arch.startswith("maskrcnn"):
        raise ModelLoadError(f"unknown Mask R-CNN architecture {arch!r}; use maskrcnn_resnet50_fpn(_v2) or tiny")
    return builder(weights=None, weights_backbone=None, num_classes=num_classes)


def coco_classes(arch: str = DEFAULT_ARCH) -> list[str]:
    """COCO category names of torchvision's published weights (offline: in the package)."""
    from torchvision.models import get_model_weights

    names = list(get_model_weights(arch).DEFAULT.meta["categories"])
    return names[1:]  # drop "__background__"


def _in_code(kind: str) -> tuple[nn.Module, list[str], str]:
    arch, classes = ("tiny", list(TINY_CLASSES)) if kind == "tiny" else (DEFAULT_ARCH, coco_classes())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = build_architecture(arch, len(classes) + 1)
    if kind == "tiny":  # random mask logits sit around 0 (a coin flip at 0.5): lean them positive so
        with torch.no_grad():  # tiny masks are non-empty, box-shaped blobs and tests see real RLE
            model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(1.0)
    return model, classes, sha256_state_dict(model.state_dict())


def _torchvision(name: str) -> tuple[nn.Module, list[str], None]:
    from torchvision.models import detection, get_model_weights

    weights = get_model_weights(name).DEFAULT
    model = getattr(detection, name)(weights=weights)
    return model, list(weights.meta["categories"])[1:], None


def _checkpoint(path: Path) -> tuple[nn.Module, list[str], str]:
    config = {}
    if path.is_dir():
        config_file = path / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        files = weight_files(path)
        if len(files) != 1:
            raise ModelLoadError(f"{path} holds {len(files)} weight files; a Mask R-CNN folder holds one")
        path = files[0]
    try:
        state = read_state_dict(path)
    except UnsafeCheckpointError as exc:
        raise ModelLoadError(str(exc)) from None
    state = state.get("model", state) if isinstance(state.get("model"), dict) else state
    num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
    classes = list(config.get("classes") or (coco_classes() if num_classes == 91 else []))
    if classes and len(classes) + 1 != num_classes:
        raise ModelLoadError(f"{path}: config names {len(classes)} classes, the checkpoint predicts {num_classes - 1}")
    model = build_architecture(config.get("architecture", DEFAULT_ARCH), num_classes)
    model.load_state_dict(state, strict=True)
    return model, classes or [f"class_{i}" for i in range(1, num_classes)], sha256_file(path)


def save_checkpoint(runner: MaskRcnnRunner, folder: Path, architecture: str) -> Path:
    """Write `runner` as a user checkpoint folder (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "maskrcnn", "architecture": architecture, "classes": runner.classes}
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.detach().cpu().contiguous() for k, v in runner.model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def build(family: str, source: ModelSource, device: torch.device, dtype: torch.dtype) -> MaskRcnnRunner:
    if source.in_code:
        model, classes, sha = _in_code(source.kind)
    elif source.kind == "torchvision":
        model, classes, sha = _torchvision(source.location)
    else:
        path = Path(source.location)
        if not path.exists():
            raise ModelLoadError(f"model path {path} does not exist")
        model, classes, sha = _checkpoint(path)
    model = model.to(device=device, dtype=dtype).eval()
    return MaskRcnnRunner(model, classes, source.uri, device, dtype, sha)
