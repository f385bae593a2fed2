"""Vector index, search and semantic dedup over the embedding tables (FAISS).

Storage comes in from flows as a ``pyarrow.fs.FileSystem`` plus paths, or as a local work
folder; nothing here imports Ray, Prefect or the flows' storage helpers.

    source.py    stream vectors + id columns from committed Parquet files, batch by batch
    store.py     the on-disk layout of one index (vectors file, id map, manifest), publish/fetch
    build.py     build (flat / IVF-PQ / HNSW), resume, add, recall against exact search
    distributed.py  encode vectors in parts elsewhere, merge them (FAISS merge_from); the Ray
                 runner is samflow/pipeline/index_parts.py
    search.py    a loaded index (one or several segments): top-k ids and exact scores, id -> row lookup
    dedup.py     exact byte duplicates, then SemDeDup (k-means, similarity within clusters)
    updates.py   ``samflow index build|add|compact``: publish, extend and merge a run's index segments
    commands.py  search and dedup over a run (storage, models); gallery.py: the preview page's data
"""
