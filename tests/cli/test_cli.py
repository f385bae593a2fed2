"""The command line as the README uses it: local folders in, local Parquet out, COCO export."""

import json

from pycocotools.coco import COCO

from samflow.cli.main import main
from samflow.scenes.sample import write_sample_dataset


def test_models_check_describes_a_model_and_refuses_a_missing_one(capsys, tmp_path):
    assert main(["models", "check", "tiny://clip"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["family"] == "clip" and facts["parameters"] > 0 and len(facts["checkpoint_sha256"]) == 64
    assert main(["models", "check", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_annotate_local_folder_then_export_coco(tmp_path, capsys, ray_cluster, prefect_server):
    images = write_sample_dataset(tmp_path / "in", n_synthetic=2, seed=5, include_skimage=False)
    out = tmp_path / "out"
    assert main(["annotate", str(tmp_path / "in"), "--out", str(out), "--profile", "tiny",
                 "--set", "stages.embed.enabled=false"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["inputs"] == len(images) == summary["counts"]["images"]
    assert not (out / "embeddings").exists()  # a disabled stage writes nothing
    assert not (out / "_staging").exists()  # everything staged was committed and cleaned up

    assert main(["export", "coco", str(out), str(tmp_path / "coco.json")]) == 0
    coco = COCO(str(tmp_path / "coco.json"))
    assert len(coco.getImgIds()) == len(images)
    assert len(coco.getAnnIds()) == summary["counts"]["annotations"] > 0
