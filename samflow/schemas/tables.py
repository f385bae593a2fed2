"""Arrow schemas of every output table and of what travels between stages (docs/architecture.md)."""

from __future__ import annotations

import pyarrow as pa

RLE_TYPE = pa.struct([("size", pa.list_(pa.int32(), 2)), ("counts", pa.string())])
BBOX_TYPE = pa.list_(pa.float32(), 4)

IMAGES = pa.schema(
    [
        ("item_id", pa.string()),
        ("uri", pa.string()),
        ("frame_index", pa.int32()),
        ("timestamp_s", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("upscale_factor", pa.float32()),
        ("run_id", pa.string()),
        # the input's sidecar JSON as it came (a WebDataset / SA-1B tar member's .json); null
        # for inputs without one. Parquet stores it with the JSON logical type.
        ("meta_json", pa.json_()),
        # the item's own id in a manifest (its ``id`` column); null when it gave none. When set,
        # item_id hashes it instead of the URI, so moved files keep their ids.
        ("source_id", pa.string()),
    ]
)

_ANNOTATION_FIELDS = [
    ("annotation_id", pa.string()),
    ("item_id", pa.string()),
    ("segmentation", RLE_TYPE),
    ("bbox", BBOX_TYPE),
    ("area", pa.int64()),
    ("predicted_iou", pa.float32()),
    ("stability_score", pa.float32()),
    ("point_coords", pa.list_(pa.list_(pa.float32(), 2))),
    ("crop_box", BBOX_TYPE),
    ("source", pa.string()),
    ("proposal_score", pa.float32()),
    ("label", pa.string()),
    ("label_score", pa.float32()),
    # concept masks only: whether CLIP's top label over the vocabulary agrees with SAM 3's, and
    # CLIP's probability of SAM 3's label
    ("verified", pa.bool_()),
    ("verify_score", pa.float32()),
    ("track_id", pa.int64()),
    # ground-truth rows only: the annotation's own id in the input (SA-1B's ``id``)
    ("source_id", pa.string()),
]


def annotations_schema(dim: int | None) -> pa.Schema:
    """The annotations table: one row per mask. ``embedding`` (null unless mask embeddings are on)
    is a fixed-size float32 list of the run's embed model width ``dim``; a run without an embed
    model (``dim`` None) has a variable-length list there, always null."""
    vector = pa.list_(pa.float32()) if dim is None else pa.list_(pa.float32(), dim)
    return pa.schema([*_ANNOTATION_FIELDS, ("embedding", vector)])


# The schema of a run without an embed model; use annotations_schema(dim) when one ran.
ANNOTATIONS = annotations_schema(None)

ERRORS = pa.schema(
    [
        ("uri", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("run_id", pa.string()),
    ]
)


# One row per object track of a video (the track stage): its id (stable within the video), the
# video, where it starts and ends, on how many sampled frames it has a mask, its label, and its
# mean mask score.
TRACKS = pa.schema(
    [
        ("track_id", pa.int64()),
        ("uri", pa.string()),
        ("first_frame", pa.int32()),
        ("last_frame", pa.int32()),
        ("first_timestamp_s", pa.float64()),
        ("last_timestamp_s", pa.float64()),
        ("num_frames", pa.int32()),
        ("label", pa.string()),
        ("score", pa.float32()),
    ]
)

# Between the track stage and the writer: per row, the tracks it summarises (a video's last frame
# row carries all of its tracks; every other row none).
TRACK_LIST = pa.list_(pa.struct(list(TRACKS)))


def embeddings_schema(dim: int) -> pa.Schema:
    """The embeddings table: one L2-normalised vector per item and model."""
    return pa.schema(
        [
            ("item_id", pa.string()),
            ("model", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
        ]
    )


# The embeddings table holds one row per image per model of stages.embed.models. Each model's
# vectors have their own size and a Parquet column of fixed-size vectors holds one size, so the
# table is split by model: CLIP's rows in embeddings/<shard>.parquet (where they always were;
# samflow's readers list the folder's own files), every further model's in embeddings/<model>/.
# Readers pick a model (embeddings_table): a recursive read of embeddings/ would mix vector sizes.
# The `model` column names the checkpoint (its URI).
EMBEDDING_MODELS = ("clip", "dinov2")
EXTRA_EMBEDDING_FAMILIES = EMBEDDING_MODELS[1:]
# Where a build before this layout put a further model's rows (read for old outputs, cleaned up alike).
LEGACY_EMBEDDING_TABLES = {"dinov2": "embeddings_dinov2"}


def embeddings_table(model: str = "clip") -> str:
    """The folder (relative to DST) holding ``model``'s rows of the embeddings table."""
    if model not in EMBEDDING_MODELS:
        raise ValueError(f"unknown embedding model {model!r}; expected one of {', '.join(EMBEDDING_MODELS)}")
    return "embeddings" if model == "clip" else f"embeddings/{model}"


# One row per reviewed mask (``samflow review import``): the item, the annotation it replaces
# (null for an added mask), the mask people settled on (null when they rejected the annotation),
# its label, what they did, who and when where the file says, and where the row came from: the
# imported file, its sha256 and format, and the import's id (``review-<sha256 prefix>``).
# ``review_id`` is stable in the file's content, so one region is one row however often it is
# imported.
REVIEW_ACTIONS = ("accepted", "corrected", "added", "rejected")
REVIEWS = pa.schema(
    [
        ("review_id", pa.string()),
        ("item_id", pa.string()),
        ("annotation_id", pa.string()),
        ("segmentation", RLE_TYPE),
        ("label", pa.string()),
        ("action", pa.string()),
        ("reviewer", pa.string()),
        ("reviewed_at", pa.timestamp("ms", tz="UTC")),
        ("source_uri", pa.string()),
        ("source_sha256", pa.string()),
        ("source_format", pa.string()),
        ("import_id", pa.string()),
    ]
)

# Regions of an imported review that could not become rows (an item the run does not have, a mask
# that does not decode): the ERRORS schema, ``uri`` the file and task, ``run_id`` the import's id.
# Apart from ``errors/`` so that annotate's inputs = images + errors stays true.
REVIEW_ERRORS_TABLE = "review_errors"

TABLES = ("images", "annotations", "embeddings", "errors", "tracks", "reviews", REVIEW_ERRORS_TABLE,
          *(embeddings_table(f) for f in EXTRA_EMBEDDING_FAMILIES), *LEGACY_EMBEDDING_TABLES.values())


# --- between the stages, the writer and the driver (never JSON text) ----------------------------

# ``_meta_<stage>``: what a stage did to one batch, on every row of it (the driver sums busy time
# and records models, placement and worker processes per stage).
STAGE_META = pa.struct([
    ("batch", pa.string()),  # the batch's id: one batch split over two shards counts once
    ("busy_s", pa.float64()),
    ("started_at", pa.float64()),  # epoch seconds
    ("rows", pa.int64()),
    ("node", pa.string()),  # Ray node id ("" outside Ray)
    ("pid", pa.int64()),
    ("model", pa.string()),
    ("checkpoint_sha256", pa.string()),
    ("family", pa.string()),
    ("torch_threads", pa.int64()),
    ("dim", pa.int64()),
    ("scale", pa.int64()),
    ("classes", pa.list_(pa.string())),
])
STAGE_META_PREFIX = "_meta_"

# One write task's shard, as the driver receives it: what it commits and what it counts.
SHARD_RESULT = pa.schema([
    ("shard", pa.string()),
    ("uris", pa.list_(pa.string())),
    ("frames", pa.list_(pa.string())),  # URIs with video frames in this shard
    ("rows", pa.map_(pa.string(), pa.int64())),  # rows staged per table
    ("meta", pa.list_(pa.struct([("stage", pa.string()), ("info", STAGE_META)]))),
])
