"""`samflow deploy` against Prefect's ephemeral server: the deployment exists with the config's
cron and the run's parameters; a run triggered from it processes exactly the new objects; a
malformed cron is a user error."""

from __future__ import annotations

import json
import re

import pytest

from samflow.cli.main import main
from samflow.config import StorageConfig
from samflow.scenes.sample import write_sample_dataset
from samflow.store.catalog import Catalog
from tests.helpers.prefect_runs import run_logs_and_artifacts, trigger_deployment


def test_deploy_registers_annotate_with_the_cron(prefect_server, tmp_path, capsys):
    from prefect.client.orchestration import get_client

    config = tmp_path / "run.yaml"
    config.write_text('schedule: "0 3 * * *"\nstages: {segment: {batch_size: 3}}\n')
    assert main(["deploy", "s3://raw/images", "--out", "s3://annotated/out", "--config", str(config),
                 "--profile", "tiny", "--name", "nightly-test", "--timezone", "Europe/Paris"]) == 0
    printed = capsys.readouterr().out
    assert "annotate-dataset/nightly-test" in printed and "0 3 * * *" in printed

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("annotate-dataset/nightly-test")
    crons = [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules]
    assert crons == [("0 3 * * *", "Europe/Paris")]
    assert deployment.parameters["src"] == "s3://raw/images"
    assert deployment.parameters["dst"] == "s3://annotated/out"
    assert deployment.parameters["profile"] == "tiny"
    assert deployment.parameters["config"]["stages"]["segment"]["batch_size"] == 3
    assert deployment.global_concurrency_limit.limit == 1  # nightly runs never overlap

    # --cron overrides the config; re-deploying updates the same deployment
    assert main(["deploy", "s3://raw/images", "--out", "s3://annotated/out", "--config", str(config),
                 "--name", "nightly-test", "--cron", "30 1 * * *"]) == 0
    with get_client(sync_client=True) as client:
        again = client.read_deployment_by_name("annotate-dataset/nightly-test")
    assert again.id == deployment.id
    assert [s.schedule.cron for s in again.schedules] == ["30 1 * * *"]


def test_malformed_cron_is_a_user_error(prefect_server, capsys):
    assert main(["deploy", "s3://raw/images", "--out", "s3://annotated/out", "--cron", "every night"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every night" in err[0] and err[0].startswith("samflow deploy: schedule")
    assert main(["schedule", "s3://raw/images", "--out", "s3://annotated/out"]) == 2
    assert "no schedule" in capsys.readouterr().err


@pytest.mark.slow
def test_a_triggered_deployment_run_processes_exactly_the_new_objects(prefect_server, s3_bucket, s3_fs, tmp_path,
                                                                     ray_cluster):
    """The deployment as a scheduler would start it: a flow run created from the deployment and
    executed by Prefect's own `prefect flow-run execute` (what a worker or `serve` runs), on a
    worker machine that joins the Ray cluster (the session's)."""
    written = write_sample_dataset(tmp_path / "in", n_synthetic=3, seed=9, include_skimage=False)
    src, dst = f"{s3_bucket}/nightly/in", f"{s3_bucket}/nightly/out"
    for path in written:
        s3_fs.put_file(str(path), f"{src}/{path.name}")
    assert main(["deploy", src, "--out", dst, "--profile", "tiny", "--cron", "0 2 * * *", "--name", "trigger-test",
                 "--set", "stages.embed.enabled=false"]) == 0

    flow_run_id = trigger_deployment("annotate-dataset/trigger-test",
                                     env={"PREFECT_LOGGING_LEVEL": "INFO", "RAY_ADDRESS": ray_cluster.address})
    catalog = Catalog(dst, StorageConfig())
    assert sorted(catalog.done_uris(catalog.committed_shards())) == sorted(f"{src}/{p.name}" for p in written)
    manifests = s3_fs.ls(f"{dst}/_runs")
    manifest = json.loads(s3_fs.cat(manifests[0]))
    assert len(manifests) == 1 and manifest["counts"]["inputs"] == len(written) == 3

    # Nobody watched it on a terminal: its progress is in the run's log, and its report is the
    # run's markdown artifact, both read back from the Prefect server.
    logs, artifacts = run_logs_and_artifacts(flow_run_id)
    assert f"samflow: run {manifest['run_id']}: 3 inputs to process" in logs
    progress = [line for line in logs if re.fullmatch(r"samflow: \d+/3 inputs \(\d+%\), .* inputs/s, ETA .*", line)]
    assert progress and progress[-1].startswith("samflow: 3/3 inputs (100%)")  # the last one, at the end
    report = artifacts["samflow-annotate-run"]
    assert f"# samflow run `{manifest['run_id']}`" in report and "| inputs | 3 |" in report


@pytest.mark.parametrize("command, flow_name, paths", [
    (["engine-round", "train", "--out", "dst", "--holdout", "holdout", "--set", "input.sa1b_ground_truth=true"],
     "engine-round", {"src": "train", "dst": "dst", "holdout": "holdout"}),
    (["synth", "dst", "--out", "syn"], "synth-dataset", {"dst": "dst", "syn": "syn"}),
])
def test_deploy_of_a_round_or_synth_keeps_the_cron_and_absolute_paths(prefect_server, tmp_path, command, flow_name,
                                                                      paths):
    from prefect.client.orchestration import get_client

    from tests.helpers.cli_process import samflow

    done = samflow(*command, "--profile", "tiny", "--deploy", "--cron", "0 4 * * 1", cwd=tmp_path)
    assert f"deployment {flow_name}/{command[0]} " in done.stdout and "0 4 * * 1" in done.stdout
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"{flow_name}/{command[0]}")
    assert [s.schedule.cron for s in deployment.schedules] == ["0 4 * * 1"]
    # a worker runs it in another folder: the relative paths typed here are made absolute
    assert {key: deployment.parameters[key] for key in paths} == {k: str(tmp_path / v) for k, v in paths.items()}
    assert deployment.parameters["profile"] == "tiny"
    assert deployment.global_concurrency_limit.limit == 1  # rounds and synth runs never overlap


def test_a_malformed_cron_of_a_round_is_one_line(tmp_path):
    from tests.helpers.cli_process import run_module

    done = run_module("samflow.cli.main", "engine-round", "train", "--out", "dst", "--holdout", "holdout",
                      "--set", "input.sa1b_ground_truth=true", "--deploy", "--cron", "every night", cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "every night" in lines[0], done.stderr
