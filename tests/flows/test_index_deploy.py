"""The index update as a Prefect deployment: `samflow deploy` registers it on the config's
`index.schedule` (and not without one); a run triggered from it builds DST's index, and the next
one adds exactly what was committed since."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from samflow.cli.main import main
from tests.helpers.index_data import clustered, copy_of_run, write_image_shard
from tests.helpers.prefect_runs import trigger_deployment


def _deployment(name: str):  # noqa: ANN202
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def test_deploy_registers_the_index_update_on_index_schedule(prefect_server, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text('schedule: "0 2 * * *"\nindex: {schedule: "0 5 * * *", kinds: [image, mask]}\n')
    assert main(["deploy", "s3://raw/images", "--out", "s3://annotated/out", "--config", str(config),
                 "--name", "idx-deploy-test", "--timezone", "Europe/Paris"]) == 0
    printed = capsys.readouterr().out
    assert "annotate-dataset/idx-deploy-test" in printed and "index-dataset/idx-deploy-test" in printed
    assert "0 5 * * * Europe/Paris" in printed

    index = _deployment("index-dataset/idx-deploy-test")
    assert [(s.schedule.cron, s.schedule.timezone) for s in index.schedules] == [("0 5 * * *", "Europe/Paris")]
    assert index.parameters["dst"] == "s3://annotated/out"
    assert index.parameters["config"]["index"]["kinds"] == ["image", "mask"]
    assert index.global_concurrency_limit.limit == 1  # two updates of one index never race
    annotate = _deployment("annotate-dataset/idx-deploy-test")
    assert [s.schedule.cron for s in annotate.schedules] == ["0 2 * * *"]

    # Without index.schedule (the default) there is no index deployment.
    assert main(["deploy", "s3://raw/images", "--out", "s3://annotated/out", "--cron", "0 2 * * *",
                 "--name", "idx-off-test"]) == 0
    assert "index-dataset" not in capsys.readouterr().out
    assert _deployment("annotate-dataset/idx-off-test") is not None
    assert _deployment("index-dataset/idx-off-test") is None


def test_malformed_index_cron_is_a_user_error(prefect_server, capsys):
    assert main(["deploy", "s3://raw/images", "--out", "s3://annotated/out", "--index-cron", "at dawn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("samflow deploy: index.schedule") and "at dawn" in err[0]


def _manifest(dst: str) -> dict:
    return json.loads(Path(dst, "_index", "image", "manifest.json").read_text())


@pytest.mark.slow
def test_triggered_index_runs_build_then_add_what_was_committed_since(ray_cluster, prefect_server, tmp_path,
                                                                      tiny_run_template):
    import pyarrow.parquet as pq

    dst = copy_of_run(tiny_run_template, tmp_path)
    images = pq.read_table(f"{dst}/images").num_rows
    assert main(["deploy", str(tmp_path / "src"), "--out", dst, "--index-cron", "0 5 * * *",
                 "--name", "idx-trigger-test"]) == 0
    assert not Path(dst, "_index").exists()

    trigger_deployment("index-dataset/idx-trigger-test", timeout_s=600)  # no index yet: a build
    built = _manifest(dst)
    assert built["count"] == images > 0 and built["model"] == "tiny://clip"

    # A later annotate run commits three more images; the next triggered run adds exactly those.
    new_items = write_image_shard(dst, "zz-later-run", clustered(3, built["dim"], seed=5), first=900)
    trigger_deployment("index-dataset/idx-trigger-test", timeout_s=600)
    updated = _manifest(dst)
    assert updated["count"] == images + 3
    assert "zz-later-run.parquet" in updated["sources"] and set(built["sources"]) < set(updated["sources"])
    # The add is a new segment holding exactly the new images; every segment together, each image once.
    def items(segment: dict) -> list[str]:
        return pq.read_table(Path(dst, "_index", "image", segment["id"], "ids.parquet")).column("item_id").to_pylist()

    assert sorted(items(updated["segments"][-1])) == sorted(new_items)
    ids = [item for segment in updated["segments"] for item in items(segment)]
    assert len(ids) == len(set(ids)) == images + 3


def test_index_flow_builds_then_adds_only_new_shards(prefect_server, tmp_path):
    from samflow.flows.index_flow import index_dataset

    dst = str(tmp_path / "out")
    write_image_shard(dst, "run1-00000", clustered(40, 16, seed=1), first=0)
    first = index_dataset(dst)
    assert first["image"]["count"] == first["image"]["added"] == 40
    write_image_shard(dst, "run2-00000", clustered(7, 16, seed=2), first=40)
    second = index_dataset(dst, config={"index": {"kinds": ["image"]}})
    assert (second["image"]["count"], second["image"]["added"]) == (47, 7)
    again = index_dataset(dst)  # nothing committed since: the same index
    assert (again["image"]["count"], again["image"]["added"]) == (47, 0)
    assert sorted(_manifest(dst)["sources"]) == ["run1-00000.parquet", "run2-00000.parquet"]
