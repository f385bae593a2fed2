"""Arrow schemas of every output table (see DESIGN.md, "Output tables")."""

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
    ]
)

ANNOTATIONS = pa.schema(
    [
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
        ("track_id", pa.int64()),
        # Variable length here: the width is the embed model's, fixed within one run.
        ("embedding", pa.list_(pa.float32())),
    ]
)

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


def embeddings_schema(dim: int) -> pa.Schema:
    """The embeddings table: one L2-normalised vector per item and model."""
    return pa.schema(
        [
            ("item_id", pa.string()),
            ("model", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
        ]
    )


TABLES = ("images", "annotations", "embeddings", "errors", "tracks")
