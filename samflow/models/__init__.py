"""Pure torch + transformers inference shared by every stage and the serving app.

One folder per family (`sam/`, `sam2/`, `sam3/`, `clip/`, `dinov2/`, `detectors/`, `unet/`,
`realesrgan/`), each with its runner and its in-code (`tiny://`, `random://`) config; shared
pre-processing and boxes in `common/`; video tracking in `video/`; the automatic mask generator in
`amg/`. `loading/` resolves URIs, checkpoints, the model cache and `models check`.
Never imports Ray, Prefect or fsspec.
"""
