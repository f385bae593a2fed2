"""The one run configuration: YAML file, then ``--set`` overrides, then an optional profile.

Every field has a default; ``samflow annotate`` with no config runs the published SAM settings
with the default Hugging Face models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageConfig(_Section):
    endpoint_url: str | None = Field(
        None, description="S3 endpoint (MinIO, moto, ...); default: AWS_ENDPOINT_URL or AWS."
    )
    region: str | None = Field(None, description="S3 region; default: the AWS chain's.")
    anon: bool = Field(False, description="Anonymous S3 access (public buckets).")


class VideoSampling(_Section):
    mode: Literal["fps", "every_n", "keyframes"] = "fps"
    fps: float = Field(1.0, description="Frames per second sampled when mode=fps.")
    every_n: int = Field(30, description="Keep one frame in N when mode=every_n.")
    max_frames: int = Field(300, description="Upper bound on frames sampled per video.")


class InputConfig(_Section):
    include: list[str] = Field(
        default_factory=lambda: ["**"], description="Globs (relative to SRC) of files to read."
    )
    exclude: list[str] = Field(
        default_factory=lambda: ["**/.*", "**/_*"], description="Globs of files to skip."
    )
    max_pixels: int = Field(
        178_956_970, description="Decompression-bomb limit: images above this many pixels fail."
    )
    max_bytes: int = Field(512 * 1024 * 1024, description="Files larger than this are refused.")
    video: VideoSampling = Field(default_factory=VideoSampling)


class StageConfig(_Section):
    enabled: bool = True
    model: str = ""
    batch_size: int = Field(4, ge=1)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractional allowed.")
    num_cpus: float = Field(1.0, ge=0)
    concurrency: tuple[int, int] = Field((1, 1), description="Actor pool size min..max.")


def _stage(enabled: bool, model: str, batch_size: int) -> Any:
    return Field(default_factory=lambda: StageConfig(enabled=enabled, model=model, batch_size=batch_size))


class StagesConfig(_Section):
    upscale: StageConfig = _stage(False, "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth", 4)
    propose: StageConfig = _stage(False, "google/owlv2-base-patch16-ensemble", 4)
    segment: StageConfig = _stage(True, "facebook/sam-vit-base", 2)
    embed: StageConfig = _stage(True, "openai/clip-vit-base-patch32", 16)


class EngineConfig(_Section):
    """Automatic mask generation; defaults are SAM's published ones."""

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    max_masks_per_image: int = Field(0, description="Keep the best N masks per image; 0 = all.")


class LabelsConfig(_Section):
    vocabulary: list[str] = Field(default_factory=list, description="Open-vocabulary labels.")
    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}."]
    )


class RayConfig(_Section):
    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray.")
    runtime_env: dict[str, Any] = Field(default_factory=dict)


class OutputConfig(_Section):
    shard_rows: int = Field(64, ge=1, description="Items per Parquet shard (one write task).")


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    storage: StorageConfig = Field(default_factory=StorageConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    schedule: str | None = Field(None, description="Cron string for the Prefect deployment.")


# `--profile tiny`: every stage on its tiny:// model, and thresholds a random model can pass,
# so an offline dry run exercises every stage and writes masks.
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "stages.upscale.model": "tiny://realesrgan",
        "stages.propose.model": "tiny://owlv2",
        "stages.segment.model": "tiny://sam",
        "stages.embed.model": "tiny://clip",
        "engine.points_per_side": 8,
        "engine.pred_iou_thresh": 0.0,
        "engine.stability_score_thresh": 0.0,
        "engine.max_masks_per_image": 16,
    }
}


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE parsed as YAML (so numbers, booleans and lists work)."""
    if "=" not in item:
        raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw else ""


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    profile: str | None = None,
) -> RunConfig:
    """Config from a YAML file, then ``profile``, then ``--set KEY=VALUE`` overrides."""
    tree: dict[str, Any] = {}
    if path:
        tree = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: the config file must be a YAML mapping")
    return config_from(tree, profile=profile, overrides=overrides)


def config_from(
    tree: dict[str, Any] | None, profile: str | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Config from a mapping (a flow parameter, a parsed file), then ``profile``, then overrides."""
    tree = _deepcopy(tree or {})
    if profile:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
        for key, value in PROFILES[profile].items():
            _set_path(tree, key, value)
    for item in overrides or []:
        _set_path(tree, *parse_override(item))
    return RunConfig.model_validate(tree)


def _deepcopy(tree: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(yaml.safe_dump(tree))
