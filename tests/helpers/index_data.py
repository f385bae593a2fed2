"""Synthetic annotate outputs for index tests: committed embeddings / annotations / images
shards written with the catalog's own marker, so the index reads them as it reads a real run."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from samflow.config import StorageConfig
from samflow.schemas import tables
from samflow.store.catalog import COMMITS, Catalog


def clustered(n: int, dim: int, seed: int, clusters: int = 20, spread: float = 0.35) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (so nearest neighbours mean something)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def _put(catalog: Catalog, table: str, shard: str, data: pa.Table) -> None:
    sink = io.BytesIO()
    pq.write_table(data, sink)
    catalog.fs.makedirs(catalog.path(table), exist_ok=True)
    catalog.fs.pipe_file(catalog.path(table, f"{shard}.parquet"), sink.getvalue())


def _embeddings(items: list[str], model: str, vectors: np.ndarray) -> pa.Table:
    dim = vectors.shape[1]
    flat = pa.array(vectors.astype(np.float32).ravel(), pa.float32())
    return pa.table({"item_id": items, "model": [model] * len(items),
                     "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)},
                    schema=tables.embeddings_schema(dim))


def write_image_shard(dst: str, shard: str, vectors: np.ndarray, first: int,
                      storage: StorageConfig | None = None, model: str = "tiny://clip",
                      uris: list[str] | None = None,
                      more: dict[str, np.ndarray] | None = None) -> list[str]:
    """One committed shard of ``len(vectors)`` images named img-<first..>; returns their item ids.
    ``more``: vectors of further embedding models by table (``embeddings/dinov2``), same shard."""
    catalog = Catalog(dst, storage or StorageConfig())
    n = len(vectors)
    items = [f"item-{first + i:07d}" for i in range(n)]
    uris = uris or [f"s3://src/img-{first + i:07d}.jpg" for i in range(n)]
    images = pa.table({
        "item_id": items, "uri": uris, "frame_index": pa.array([0] * n, pa.int32()),
        "timestamp_s": pa.array([0.0] * n), "width": pa.array([64] * n, pa.int32()),
        "height": pa.array([64] * n, pa.int32()), "upscale_factor": pa.array([1.0] * n, pa.float32()),
        "run_id": ["run"] * n, "meta_json": pa.array([None] * n, pa.json_()),
        "source_id": pa.array([None] * n, pa.string()),
    }, schema=tables.IMAGES)
    _put(catalog, "images", shard, images)
    _put(catalog, "embeddings", shard, _embeddings(items, model, vectors))
    for table, extra in (more or {}).items():
        _put(catalog, table, shard, _embeddings(items, f"tiny://{table.rsplit('/', 1)[-1]}", extra))
    rows = {"images": n, "embeddings": n, **{table: n for table in more or {}}}
    catalog.write_json(catalog.path(COMMITS, f"{shard}.json"),
                       {"shard": shard, "run_id": "run", "uris": uris, "rows": rows})
    return items


def write_mask_shard(dst: str, shard: str, vectors: np.ndarray, item_ids: list[str],
                     fixed_size: bool, storage: StorageConfig | None = None) -> list[str]:
    """Annotations of already written images, one mask per vector (cycling over the items);
    ``fixed_size`` picks the vector column type (variable list today, fixed-size list later)."""
    catalog = Catalog(dst, storage or StorageConfig())
    n, dim = vectors.shape
    flat = pa.array(vectors.astype(np.float32).ravel(), pa.float32())
    column = (pa.FixedSizeListArray.from_arrays(flat, dim) if fixed_size
              else pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * dim, dim), pa.int32()), flat))
    ids = [f"{shard}-ann-{i}" for i in range(n)]
    table = pa.table({
        "annotation_id": ids,
        "item_id": [item_ids[i % len(item_ids)] for i in range(n)],
        "bbox": pa.array([[1.0, 2.0, 3.0, 4.0]] * n, tables.BBOX_TYPE),
        "label": ["cat" if i % 2 else "dog" for i in range(n)],
        "embedding": column,
    })
    _put(catalog, "annotations", shard, table)
    catalog.write_json(catalog.path(COMMITS, f"{shard}.json"),
                       {"shard": shard, "run_id": "run", "uris": [], "rows": {"annotations": n}})
    return ids


def write_scenes(folder, n: int = 4, seed: int = 3) -> list:
    """``n`` small synthetic scenes (PNG, 96x128) plus a byte copy of the first (``copy.png``)."""
    from pathlib import Path

    from PIL import Image

    from samflow.scenes.sample import synthetic_scene

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        image, _, _ = synthetic_scene(rng, 96, 128, n_shapes=3)
        path = folder / f"scene_{i}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    (folder / "copy.png").write_bytes(paths[0].read_bytes())
    return paths + [folder / "copy.png"]


def copy_of_run(template: Path, root: Path) -> str:
    """A copy of the folder a ``tiny_annotate_run(template)`` filled (its src and out) in ``root``,
    for a test that adds to the run's output; returns the copy's DST."""
    import shutil

    shutil.copytree(template, root, dirs_exist_ok=True)
    return str(Path(root) / "out")


def tiny_annotate_run(root, overrides: tuple[str, ...] = ()) -> str:
    """A real annotate run on tiny models (Ray + Prefect fixtures must be up): image vectors,
    mask vectors and labels (plus ``overrides``). Returns DST."""
    from samflow.config import load_config
    from samflow.flows.annotate import annotate_dataset

    write_scenes(root / "src")
    cfg = load_config(profile="tiny", overrides=[
        "stages.embed.mask_embeddings=true", "labels.vocabulary=[cat,dog,car]",
        "engine.points_per_side=4", *overrides,
    ])
    dst = str(root / "out")
    annotate_dataset(str(root / "src"), dst, config=cfg.model_dump(mode="json"))
    return dst
