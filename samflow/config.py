"""The one run configuration: YAML file, then ``--set`` overrides, then an optional profile.

Every field has a default; ``samflow annotate`` with no config runs the published SAM settings
with the default Hugging Face models.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from samflow.actors.stage import Section
from samflow.actors.table import sections as stage_sections
from samflow.inputs import INPUT_FORMATS
from samflow.models.amg.params import AmgParams

from samflow.synth.settings import SynthConfig


class StorageRetries(Section):
    """How S3 requests ride out throttling and transient faults (botocore's retry modes):
    503 / SlowDown / throttling codes, 500 / 502 / 504, connection resets and timeouts are
    retried with exponential backoff and jitter; 403, 404 and other permanent errors are not."""

    max_attempts: int = Field(10, ge=1, description="Attempts per request, the first one included.")
    mode: Literal["standard", "adaptive"] = Field(
        "standard", description="standard: backoff with jitter; adaptive: also rate-limits this client on throttling."
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="Seconds to open a connection before retrying.")
    read_timeout_s: float = Field(60.0, gt=0, description="Seconds without response bytes before retrying.")


class StorageConfig(Section):
    endpoint_url: str | None = Field(
        None, description="S3 endpoint (MinIO, moto, ...); default: AWS_ENDPOINT_URL or AWS."
    )
    region: str | None = Field(None, description="S3 region; default: the AWS chain's.")
    anon: bool = Field(False, description="Anonymous S3 access (public buckets).")
    retries: StorageRetries = Field(default_factory=StorageRetries)


class VideoSampling(Section):
    mode: Literal["fps", "every_n", "keyframes"] = "fps"
    fps: float = Field(1.0, description="Frames per second sampled when mode=fps.")
    every_n: int = Field(30, description="Keep one frame in N when mode=every_n.")
    max_frames: int = Field(
        0, ge=0,
        description="Cap on frames sampled per video; 0 = no cap. A video cut by the cap gets a "
        "frames_capped row in errors/ naming how many sampled frames were skipped.",
    )
    chunk_frames: int = Field(
        16, ge=1,
        description="Frames per chunk leaving the decoder (and the track stage): a video streams "
        "through the pipeline in chunks, so memory does not grow with its length.",
    )


class InputConfig(Section):
    format: Literal[INPUT_FORMATS] = Field(
        "auto",
        description="What SRC holds: files (images/videos), manifest (Parquet/CSV/JSONL with a "
        "'uri' column), webdataset (tar shards), parquet (a column of image bytes); auto detects.",
    )
    include: list[str] = Field(
        default_factory=lambda: ["**"], description="gitignore-style globs (pathspec), relative to SRC, of files to read."
    )
    exclude: list[str] = Field(
        default_factory=lambda: ["**/.*", "**/_*"], description="Globs of files to skip."
    )
    max_pixels: int = Field(
        178_956_970, description="Decompression-bomb limit: images above this many pixels fail."
    )
    max_bytes: int = Field(512 * 1024 * 1024, description="Files larger than this are refused.")
    video: VideoSampling = Field(default_factory=VideoSampling)
    sa1b_ground_truth: bool = Field(
        False,
        description="SA-1B tars: each image's sidecar 'annotations' (COCO RLE masks) also become "
        "annotation rows with source 'ground_truth' (source_id = the annotation's id), checked with "
        "pycocotools; an item with a malformed one becomes an error row.",
    )


def _stages_section() -> type[Section]:
    """``stages``: one section per line of the stage table (samflow/actors/table.py), each the
    stage's own config class with the stage's defaults."""
    fields: dict[str, Any] = {name: (cls, Field(default_factory=cls)) for name, cls in stage_sections().items()}
    return create_model("StagesConfig", __base__=Section, __module__=__name__, **fields)


StagesConfig = _stages_section()


def _engine_section() -> type[Section]:
    """``engine``: the run-config fields of AmgParams (samflow.models.amg), with its defaults."""
    hints = typing.get_type_hints(AmgParams)
    fields: dict[str, Any] = {
        f.name: (hints[f.name], Field(f.default, description=f.metadata.get("doc")))
        for f in dataclasses.fields(AmgParams) if f.metadata.get("config", True)
    }
    return create_model("EngineConfig", __base__=Section, __module__=__name__,
                        __doc__="Automatic mask generation; defaults are SAM's published ones.", **fields)


EngineConfig = _engine_section()


class ExemplarConfig(Section):
    """Example boxes of a concept on one reference image (a visual prompt for SAM 3)."""

    image: str = Field(description="URI of the reference image (local path, file://, s3://).")
    boxes: list[tuple[float, float, float, float]] = Field(
        min_length=1, description="Boxes [x0, y0, x1, y1] in the reference image's pixels, each one instance."
    )


class LabelsConfig(Section):
    vocabulary: list[str] = Field(
        default_factory=list,
        description="Open-vocabulary labels: the embed stage gives every mask the likeliest one "
        "(zero-shot CLIP); empty = no labels.",
    )
    templates: list[str] = Field(
        default_factory=lambda: ["a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}."],
        description="Prompt templates ({} = the label); a label's text vector is their mean.",
    )
    exemplars: dict[str, list[ExemplarConfig]] = Field(
        default_factory=dict,
        description="Concept -> example boxes on reference images: the concepts stage prompts SAM 3 "
        "with the concept's text and these boxes (for concepts words describe badly). Keys must be "
        "in the vocabulary.",
    )


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray.")
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    cpu_fallback: bool | None = Field(
        None,
        description="Whether stages asking for GPUs run on CPU when the cluster has no GPU as the "
        "run starts. null = only on a local Ray that samflow starts itself (a joined cluster may "
        "start GPU nodes on demand, e.g. KubeRay autoscaling from zero: there the stage waits).",
    )
    resource_wait_s: float = Field(
        300.0, ge=0,
        description="How long a run waits, before its stream starts, for resources only an "
        "autoscaler could add (GPU nodes for GPU stages); then it fails with a message naming the "
        "short resource. A cluster that cannot autoscale fails at once.",
    )
    autoscaling: bool | None = Field(
        None,
        description="Whether the cluster may add nodes (decides between waiting and failing at "
        "once); null = ask the cluster (the node types its autoscaler publishes).",
    )


class OutputConfig(Section):
    shard_rows: int = Field(64, ge=1, description="Items per Parquet shard (one write task).")
    lease_ttl_s: float = Field(
        60.0, gt=0, description="Lifetime of DST's lease (one run per output), renewed every third of it; "
        "a killed run's lease expires after this long and the next run takes over.",
    )


class IndexConfig(Section):
    """The scheduled index update (``samflow deploy`` / ``samflow schedule``): builds DST's vector
    index the first time, then adds the vectors of shards committed since (``samflow index add``)."""

    schedule: str | None = Field(
        None, description="Cron string of the index-update deployment; None (default): no index deployment.",
    )
    kinds: list[Literal["image", "mask"]] = Field(
        default_factory=lambda: ["image"],
        description="Indexes kept up to date: image (CLIP vector per image) and/or mask "
        "(needs stages.embed.mask_embeddings).",
    )
    max_segments: int = Field(
        8, ge=1,
        description="`index add` writes each update as a new segment; past this many it merges them "
        "into one (as `samflow index compact` does).",
    )


class TrainLossConfig(Section):
    """SAM's loss: focal and dice on the masks (the paper's 20:1), MSE on the IoU head."""

    focal_weight: float = Field(20.0, ge=0, description="Weight of the focal loss (alpha 0.25, gamma 2). 20 is SAM's, for fine-tuning a trained model; a random model learns faster at about 2 (bench/loop.py).")
    dice_weight: float = Field(1.0, ge=0, description="Weight of the dice loss.")
    iou_weight: float = Field(1.0, ge=0, description="Weight of the IoU head's mean squared error.")


class TrainConfig(Section):
    """``samflow train`` / the engine round: fine-tuning the segment model (SAM, SAM 2) on DST's
    ground-truth masks (annotations with source ground_truth) and reviewed masks (reviews/)."""

    base_model: str | None = Field(
        None, description="Model to start from (any model URI); null: stages.segment.model. --base overrides.")
    epochs: int = Field(4, ge=1, description="Passes over the training split.")
    max_minutes: float | None = Field(
        None, gt=0, description="Stop after this many minutes of training, counted from the first batch (the "
        "current step ends, the held-out split is scored and a checkpoint written); null: no limit.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel, DDP: gloo on CPU, NCCL on GPU).")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    placement: Literal["PACK", "SPREAD"] = Field(
        "PACK", description="Where the workers go: PACK fills a node first (Ray's default), SPREAD puts them on "
        "different nodes.")
    max_failures: int = Field(
        3, ge=-1, description="Failures of a worker or its node the run recovers from (Ray Train restarts the "
        "workers from the last checkpoint; the time budget starts again); -1: no limit, 0: the run fails.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker (also its torch threads, rounded up).")
    threads_per_worker: int | None = Field(
        None, ge=1, description="Torch threads per worker; null: cpus_per_worker rounded up. More threads than "
        "reserved CPUs compete with the sample preparation (2-core CPU, 1 reserved: 33 images/s with 1 thread, 20 with 2).")
    batch_size: int = Field(4, ge=1, description="Images per step per worker (the image encoder runs once per image).")
    masks_per_image: int = Field(8, ge=1, description="Masks trained per image per step (drawn again when it has fewer).")
    box_fraction: float = Field(0.5, ge=0, le=1, description="Share of a step's masks prompted by a box; the rest by a point.")
    box_jitter: float = Field(0.1, ge=0, description="Std of box-corner noise, as a share of the box side (max 20 input px).")
    correction_rounds: int = Field(
        2, ge=0, description="Corrective rounds after the first prompt: each adds a click from the previous "
        "prediction's error (positive where missed, negative where spilled).")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate (the peak, after warm-up).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="The learning rate after warm-up: constant, or a cosine decay to zero over the "
        "planned steps (epochs) or the max_minutes budget, whichever ends first.")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warm-up to learning_rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    image_encoder: Literal["frozen", "lora", "full"] = Field(
        "frozen", description="The image encoder: frozen (features computed without gradients), lora "
        "(low-rank adapters on its attention, merged into the saved weights) or full (every weight trains).")
    prompt_encoder: bool = Field(True, description="Train the prompt encoder.")
    mask_decoder: bool = Field(True, description="Train the mask decoder (and its IoU head).")
    lora_rank: int = Field(8, ge=1, description="LoRA rank (image_encoder: lora).")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha (image_encoder: lora).")
    holdout_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of DST's items held out (by a hash of item_id: the same items every "
        "run) and scored each epoch: mean IoU of one centre-point prompt per mask.")
    use_reviews: bool = Field(True, description="Train on reviews/ (accepted, corrected, added masks) when present.")
    shuffle_buffer: int = Field(64, ge=0, description="Images in each worker's local shuffle buffer; 0: stream order.")
    checkpoint_uri: str | None = Field(
        None, description="Where epoch checkpoints go (local or s3://); null: DST/_train/. A run with the same "
        "DST and --out resumes from its last checkpoint.")
    seed: int = Field(0, description="Seed of prompt sampling and mask choice.")
    loss: TrainLossConfig = Field(default_factory=TrainLossConfig)


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
    index: IndexConfig = Field(default_factory=IndexConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _concepts_have_prompts(self) -> RunConfig:
        if self.stages.concepts.enabled and not self.labels.vocabulary:
            raise ValueError("stages.concepts is enabled but labels.vocabulary is empty: its concepts are the prompts")
        unknown = sorted(set(self.labels.exemplars) - set(self.labels.vocabulary))
        if unknown:
            raise ValueError(f"labels.exemplars names concepts not in labels.vocabulary: {unknown}")
        return self


# `--profile tiny`: every stage on its tiny:// model, and thresholds a random model can pass,
# so an offline dry run exercises every stage and writes masks.
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "stages.upscale.model": "tiny://realesrgan",
        "stages.propose.model": "tiny://owlv2",
        "stages.concepts.model": "tiny://sam3",
        "stages.segment.model": "tiny://sam",
        "stages.track.model": "tiny://sam2",
        "stages.embed.model": "tiny://clip",
        "stages.semantic.model": "tiny://unet",
        "stages.embed.dinov2_model": "tiny://dinov2",
        "synth.model": "tiny://controlnet",
        "engine.points_per_side": 8,
        "engine.pred_iou_thresh": 0.0,
        "engine.stability_score_thresh": 0.0,
        "engine.max_masks_per_image": 16,
        "synth.min_predicted_iou": 0.0,
        "synth.min_stability_score": 0.0,
        "synth.min_fidelity": 0.0,
        "synth.steps": 2,
        "synth.short_side": 64,
        "synth.max_side": 96,
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
