"""The one run configuration: YAML file, then ``--set`` overrides, then an optional profile.

Every field has a default; ``samflow annotate`` with no config runs the published SAM settings
with the default Hugging Face models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageRetries(_Section):
    """How S3 requests ride out throttling and transient faults (botocore's retry modes):
    503 / SlowDown / throttling codes, 500 / 502 / 504, connection resets and timeouts are
    retried with exponential backoff and jitter; 403, 404 and other permanent errors are not."""

    max_attempts: int = Field(10, ge=1, description="Attempts per request, the first one included.")
    mode: Literal["standard", "adaptive"] = Field(
        "standard", description="standard: backoff with jitter; adaptive: also rate-limits this client on throttling."
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="Seconds to open a connection before retrying.")
    read_timeout_s: float = Field(60.0, gt=0, description="Seconds without response bytes before retrying.")


class StorageConfig(_Section):
    endpoint_url: str | None = Field(
        None, description="S3 endpoint (MinIO, moto, ...); default: AWS_ENDPOINT_URL or AWS."
    )
    region: str | None = Field(None, description="S3 region; default: the AWS chain's.")
    anon: bool = Field(False, description="Anonymous S3 access (public buckets).")
    retries: StorageRetries = Field(default_factory=StorageRetries)


class VideoSampling(_Section):
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


class InputConfig(_Section):
    format: Literal["auto", "files", "manifest", "webdataset", "parquet"] = Field(
        "auto",
        description="What SRC holds: files (images/videos), manifest (Parquet/CSV/JSONL with a "
        "'uri' column), webdataset (tar shards), parquet (a column of image bytes); auto detects.",
    )
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
    sa1b_ground_truth: bool = Field(
        False,
        description="SA-1B tars: each image's sidecar 'annotations' (COCO RLE masks) also become "
        "annotation rows with source 'ground_truth' (source_id = the annotation's id), checked with "
        "pycocotools; an item with a malformed one becomes an error row.",
    )


class StageConfig(_Section):
    """One model stage: its model and the actor pool that hosts it."""

    enabled: bool = Field(True, description="Run this stage; a disabled stage adds no columns and no actors.")
    model: str = Field(
        "", description="Model URI: Hub id, hf://, local path, s3:// or https:// (fetched once per node "
        "into $SAMFLOW_MODEL_CACHE; '#sha256=<hex>' at the end pins its hash) or tiny://<family>."
    )
    model_sha256: str | None = Field(
        None, description="Expected sha256 of an s3:// / https:// model (a file's hash, or a folder's "
        "checkpoint hash as `samflow models check` prints it); a fetched copy that differs is refused.",
    )
    batch_size: int = Field(4, ge=1, description="Rows (images) per model call.")
    num_gpus: float = Field(
        0.0, ge=0,
        description="GPUs per actor; fractional allowed (0.5 = two actors share a GPU); 0 = CPU "
        "(Ray hides the GPUs from the actor). Without any GPU see ray.cpu_fallback.",
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per actor.")
    num_threads: int | None = Field(
        None, ge=1, description="torch threads per actor; default: num_cpus as configured, rounded "
        "up, at most the node's CPUs (Ray would give one thread per reserved CPU, and a small cluster's "
        "fit may shrink the reservation to a fraction).",
    )
    concurrency: tuple[int, int] = Field(
        (1, 1), description="Actor pool size min..max; Ray Data autoscales within it."
    )


# Each stage redeclares its own defaults (a section given partly in YAML or by --set keeps the
# stage's defaults for the rest, not the generic StageConfig ones).


class UpscaleStageConfig(StageConfig):
    """Real-ESRGAN on small images; later stages see the upscaled pixels, outputs stay in the
    original image's coordinates."""

    enabled: bool = Field(False, description="Off by default: upscaling costs more than any other stage.")
    model: str = Field(
        "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
        description="Real-ESRGAN checkpoint: a .pth / .safetensors file or a directory holding one; "
        "the default, the official x4plus release, is fetched once per node into the model cache.",
    )

    min_short_side: int = Field(
        256, ge=1, description="Only images whose shorter side is below this many pixels are upscaled."
    )
    max_output_pixels: int = Field(
        4096 * 4096, ge=1,
        description="An image whose upscaled size would exceed this many pixels is left as it is.",
    )
    tile: int | None = Field(
        256, ge=16, description="Tile size (input pixels) for tiled inference; null = whole images."
    )
    save: bool = Field(False, description="Also write each upscaled image to DST/upscaled/<item_id>.png.")


class ProposeStageConfig(StageConfig):
    """Box proposals (OWLv2, Grounding DINO, RT-DETR / D-FINE, Mask R-CNN), given to segment as box prompts."""

    enabled: bool = Field(False, description="Off by default: segment then runs on the point grid alone.")
    model: str = Field(
        "google/owlv2-base-patch16-ensemble",
        description="Detector URI (OWLv2, Grounding DINO, RT-DETR / D-FINE, Mask R-CNN: torchvision://<builder> "
        "or a checkpoint folder).",
    )

    max_boxes: int = Field(50, ge=1, description="Keep at most this many boxes per image (best first).")
    score_thresh: float = Field(
        0.1, ge=0.0, le=1.0, description="Minimum objectness (or query) score of a kept box."
    )
    nms_iou: float = Field(0.5, ge=0.0, le=1.0, description="Boxes overlapping a better one above this IoU are dropped.")
    queries: list[str] = Field(
        default_factory=list,
        description="Text queries for open-vocabulary boxes; empty = class-agnostic objectness.",
    )
    family: Literal["auto", "owlv2", "grounding_dino", "detr", "maskrcnn"] = Field(
        "auto",
        description="Detector family of `model`: auto = from the URI / checkpoint config (model_type); "
        "owlv2 and grounding_dino take `queries` (grounding_dino needs them), detr (RT-DETR v2, D-FINE) and maskrcnn are closed-set "
        "and give their class names to the masks they prompt (label / label_score).",
    )
    maskrcnn_masks: Literal["prompts", "rows"] = Field(
        "prompts",
        description="Mask R-CNN only: prompts = its boxes prompt SAM in segment; rows = its own masks "
        "become annotation rows (source maskrcnn) and segment gets no box prompts.",
    )


class ConceptsStageConfig(StageConfig):
    """SAM 3: every instance of each ``labels.vocabulary`` concept (the prompts), labelled."""

    enabled: bool = Field(False, description="Off by default; needs a non-empty labels.vocabulary.")
    model: str = Field(
        "facebook/sam3",
        description="SAM 3 model URI (the Hub repository is gated: accept its licence, set HF_TOKEN).",
    )
    batch_size: int = Field(4, ge=1, description="Images per SAM 3 call (every prompt of each).")

    score_thresh: float = Field(
        0.5, ge=0.0, le=1.0, description="Keep instances whose score (detection x presence) is above this."
    )
    mask_thresh: float = Field(0.5, gt=0.0, lt=1.0, description="Mask probability above which a pixel is in.")
    max_instances: int = Field(100, ge=1, description="At most this many instances per concept and image.")
    nms_iou: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Instances of one concept overlapping a better one above this box IoU are duplicates "
        "(instances of different concepts are all kept).",
    )


class SegmentStageConfig(StageConfig):
    """SAM through the mask-generation engine (parameters under ``engine``)."""

    model: str = Field("facebook/sam-vit-base", description="SAM model URI.")
    batch_size: int = Field(2, ge=1, description="Images per engine call (each is many decoder calls).")


class TrackStageConfig(StageConfig):
    """Videos: objects the segment engine finds on the first sampled frame and every
    ``reseed_s`` seconds, followed through the sampled frames by SAM 2 video propagation, in
    chunks of ``input.video.chunk_frames`` (state bounded by one chunk). Each video is decoded,
    seeded and tracked in order by one actor of this pool; still images pass through. With
    ``stages.concepts`` on, SAM 3's instances of ``labels.vocabulary`` on the seed frames seed
    labelled tracks (the grid covers the rest); each track keeps its label."""

    model: str = Field(
        "facebook/sam2.1-hiera-small",
        description="Video model URI; its family picks the tracker: SAM 2 / 2.1 (Sam2VideoModel) or "
        "SAM 3 (facebook/sam3, tiny://sam3: Sam3TrackerVideoModel).",
    )
    batch_size: int = Field(
        8, ge=1, description="Rows per call: images pass straight through, a video row is tracked whole."
    )
    reseed_s: float = Field(
        5.0, gt=0, description="Seconds between seed frames: new objects get new ids, known ones keep theirs."
    )
    match_iou: float = Field(
        0.5, ge=0.0, le=1.0, description="Mask IoU at which a seed is the same object as a track."
    )
    max_objects: int = Field(32, ge=1, description="Objects tracked at once per video (best seeds first).")


class EmbedStageConfig(StageConfig):
    """CLIP: one vector per image, labels (labels.vocabulary) and optional vectors per mask."""

    model: str = Field("openai/clip-vit-base-patch32", description="CLIP (or SigLIP) model URI.")
    batch_size: int = Field(16, ge=1, description="Images per CLIP call.")

    mask_embeddings: bool = Field(
        False, description="Also write one CLIP vector per mask crop (annotations.embedding)."
    )
    crops_per_batch: int = Field(64, ge=1, description="Mask crops per CLIP call.")
    models: list[Literal["clip", "dinov2"]] = Field(
        default_factory=lambda: ["clip"],
        description="Embedding models: clip = `model` (vectors, labels, mask vectors -> embeddings/); "
        "dinov2 = `dinov2_model` (one image vector per image -> embeddings/dinov2/, same columns; "
        "the embeddings table then has one row per image per model).",
    )
    dinov2_model: str = Field(
        "facebook/dinov2-base", description="DINOv2 model URI used when `models` lists dinov2."
    )


class SemanticStageConfig(StageConfig):
    """Semantic segmentation (a U-Net or a torchvision segmentation model): one mask row per
    class region, source "semantic"."""

    enabled: bool = Field(False, description="Off by default.")
    model: str = Field(
        "", description="Segmentation checkpoint folder (config.json naming classes and input size + one "
        "weight file), s3:// / https:// copy of one, or tiny://unet.",
    )
    batch_size: int = Field(4, ge=1, description="Images per model call.")
    classes: list[str] = Field(
        default_factory=list, description="Class names in output-channel order; empty = the checkpoint's."
    )
    input_size: tuple[int, int] | None = Field(
        None, description="Model input (height, width); null = the checkpoint config's."
    )
    skip_classes: list[str] = Field(
        default_factory=lambda: ["background"], description="Classes that give no rows."
    )
    connected_components: bool = Field(
        False, description="One row per connected region of a class instead of one per class."
    )
    min_area: int = Field(1, ge=1, description="Regions smaller than this many pixels give no row.")


class StagesConfig(_Section):
    upscale: UpscaleStageConfig = Field(default_factory=UpscaleStageConfig)
    propose: ProposeStageConfig = Field(default_factory=ProposeStageConfig)
    concepts: ConceptsStageConfig = Field(default_factory=ConceptsStageConfig)
    segment: SegmentStageConfig = Field(default_factory=SegmentStageConfig)
    track: TrackStageConfig = Field(default_factory=TrackStageConfig)
    embed: EmbedStageConfig = Field(default_factory=EmbedStageConfig)
    semantic: SemanticStageConfig = Field(default_factory=SemanticStageConfig)


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


class ExemplarConfig(_Section):
    """Example boxes of a concept on one reference image (a visual prompt for SAM 3)."""

    image: str = Field(description="URI of the reference image (local path, file://, s3://).")
    boxes: list[tuple[float, float, float, float]] = Field(
        min_length=1, description="Boxes [x0, y0, x1, y1] in the reference image's pixels, each one instance."
    )


class LabelsConfig(_Section):
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


class RayConfig(_Section):
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


class OutputConfig(_Section):
    shard_rows: int = Field(64, ge=1, description="Items per Parquet shard (one write task).")
    lease_ttl_s: float = Field(
        60.0, gt=0, description="Lifetime of DST's lease (one run per output), renewed every third of it; "
        "a killed run's lease expires after this long and the next run takes over.",
    )


class IndexConfig(_Section):
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
