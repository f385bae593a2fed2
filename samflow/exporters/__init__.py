"""Exporters: committed output tables (pyarrow) -> other tools' formats (COCO, MOT, YouTube-VIS,
Label Studio). They take tables and write files; reading DST is the flows' job (storage, catalog)."""
