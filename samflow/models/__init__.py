"""Pure torch + transformers inference shared by every stage and the serving app.

Entry points: `registry.load_model(family, uri)` -> a runner (sam.SamRunner, sam2.Sam2Runner,
clip.ClipRunner, dinov2.DinoRunner, owlv2.Owlv2Runner, realesrgan.RealEsrganRunner);
`video_models.load_video_model(uri)` for video propagation (SAM 2 or SAM 3's tracker, by the
URI's family); `check.check_model(uri)` for
`samflow models check`. Never imports Ray, Prefect or fsspec.
"""
