"""The deployment files in infra/ parse and say what samflow needs (Docker cannot run here).

Each test checks a field a deployment breaks without: ports, GPU resources, autoscaling bounds,
entrypoints, pins that must agree with pyproject.toml and the installed Ray / Prefect, and that
no secret is written into a file.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from prefect import flow

from samflow.config import load_config
from samflow.flows import deployments
from tests.helpers.cluster_fixtures import prefect_server  # noqa: F401  (the session's Prefect server)

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE", re.IGNORECASE)
# A value that substitutes from the environment (compose) instead of holding the secret.
ENV_SUBSTITUTION = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")


def _load(name: str) -> Any:
    return yaml.safe_load((INFRA / name).read_text())


def _load_all(name: str) -> dict[str, Any]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((INFRA / name).read_text()) if doc}


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pinned(package: str) -> str:
    for requirement in _pyproject()["project"]["dependencies"]:
        match = re.match(rf"^{re.escape(package)}(\[[^\]]*\])?==([\w.]+)$", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


# ---------------------------------------------------------------- Dockerfile


def _dockerfile() -> str:
    return (INFRA / "Dockerfile").read_text()


def test_dockerfile_uses_a_cuda_base_and_the_python_pyproject_requires():
    text = _dockerfile()
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base, "the base image is an ARG with a pinned default"
    assert base.group(1).startswith("nvidia/cuda:") and "runtime" in base.group(1)
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", text, re.MULTILINE)
    assert ">=3.11,<3.12" == _pyproject()["project"]["requires-python"]
    assert "python3.11 -m venv" in text


def test_dockerfile_installs_the_project_with_pip_install_dot():
    run_lines = [line for line in _dockerfile().splitlines() if "pip install" in line]
    assert any(re.search(r"pip install \.(\s|$)", line) for line in run_lines)
    assert re.search(r"^EXPOSE 8265 6379 10001$", _dockerfile(), re.MULTILINE)


def test_dockerfile_dependency_layer_installs_exactly_the_pyproject_pins(tmp_path):
    # The Dockerfile turns pyproject.toml into a requirements file with a Python one-liner;
    # run that very line here and compare with the pins.
    match = re.search(r'RUN python -c "(.+?)" \\', _dockerfile())
    assert match, "dependency layer one-liner not found"
    code = match.group(1).replace("\\\\", "\\")  # the shell's double quotes unescape \\ -> \
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines() == _pyproject()["project"]["dependencies"]


def test_dockerignore_keeps_the_venv_and_git_out_of_the_build_context():
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


# ---------------------------------------------------------------- KubeRay


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return template["spec"]["containers"]


def _check_ray_cluster_spec(spec: dict[str, Any], *, min_gpu_max_replicas: int = 2) -> None:
    assert spec["rayVersion"] == importlib.metadata.version("ray") == _pinned("ray")
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True

    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    (head_container,) = _containers(head["template"])
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001}

    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    assert gpu["maxReplicas"] >= min_gpu_max_replicas
    (gpu_container,) = _containers(gpu["template"])
    resources = gpu_container["resources"]
    gpus = int(resources["limits"]["nvidia.com/gpu"])
    assert gpus >= 1 and int(resources["requests"]["nvidia.com/gpu"]) == gpus
    # Ray must advertise exactly the GPUs the pod was given.
    assert int(gpu["rayStartParams"]["num-gpus"]) == gpus
    tolerations = gpu["template"]["spec"].get("tolerations", [])
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)

    for group in [head, *spec["workerGroupSpecs"]]:
        for container in _containers(group["template"]):
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), image
            _assert_no_secret_values(container.get("env", []))
    images = {c["image"] for g in [head, *spec["workerGroupSpecs"]] for c in _containers(g["template"])}
    assert len(images) == 1, "head and workers must run the same image (same Ray, same code)"


def _assert_no_secret_values(env: list[dict[str, Any]]) -> None:
    for var in env:
        if SECRET_NAME.search(var["name"]):
            assert "value" not in var, f"{var['name']} must come from a Secret (valueFrom)"


def test_raycluster_has_ports_gpu_group_and_autoscaling():
    cluster = _load("k8s/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    _check_ray_cluster_spec(cluster["spec"])
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    # A long-lived cluster scales its GPU workers to zero when idle.
    assert groups["gpu"]["minReplicas"] == 0
    assert cluster["spec"]["autoscalerOptions"]["idleTimeoutSeconds"] > 0


def test_rayjob_runs_samflow_annotate_with_its_mounted_config():
    docs = _load_all("k8s/rayjob.yaml")
    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["samflow", "annotate"]
    assert argv[2].startswith("s3://") and argv[argv.index("--out") + 1].startswith("s3://")
    assert spec["shutdownAfterJobFinishes"] is True
    _check_ray_cluster_spec(spec["rayClusterSpec"], min_gpu_max_replicas=1)

    # The --config path is where the ConfigMap is mounted on the head (the driver runs there),
    # and the config in it is a valid samflow run config.
    config_path = Path(argv[argv.index("--config") + 1])
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (mount,) = [m for m in _containers({"spec": head})[0]["volumeMounts"] if m["name"] == "run-config"]
    assert config_path.parent == Path(mount["mountPath"])
    (volume,) = [v for v in head["volumes"] if v["name"] == "run-config"]
    config_map = docs["ConfigMap"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    from samflow.config import RunConfig

    run = RunConfig.model_validate(yaml.safe_load(config_map["data"][config_path.name]))
    assert run.stages.segment.num_gpus > 0

    from ray.runtime_env import RuntimeEnv

    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)  # Ray's own validation of the runtime_env fields
    _assert_no_secret_values([{"name": k, "value": v} for k, v in runtime_env.get("env_vars", {}).items()])


# ---------------------------------------------------------------- Ray cluster launcher


def test_ray_cluster_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load("ray-cluster.yaml")
    validate_config(prepare_config(config))  # Ray's JSON schema plus its consistency checks

    gpu = config["available_node_types"]["gpu"]
    assert gpu["resources"]["GPU"] >= 1
    assert 0 <= gpu["min_workers"] < gpu["max_workers"] <= config["max_workers"]
    assert config["available_node_types"][config["head_node_type"]]["resources"]["GPU"] == 0
    assert "--gpus all" in config["docker"]["worker_run_options"]
    assert "--gpus all" not in config["docker"]["run_options"]  # the head has no GPU
    assert config["docker"]["image"] == _load("k8s/raycluster.yaml")["spec"]["headGroupSpec"][
        "template"
    ]["spec"]["containers"][0]["image"]

    head_start = " ".join(config["head_start_ray_commands"])
    for flag in ("--port=6379", "--dashboard-port=8265", "--ray-client-server-port=10001",
                 "--dashboard-host=0.0.0.0", "--autoscaling-config="):
        assert flag in head_start
    assert any(":6379" in c for c in config["worker_start_ray_commands"])


# ---------------------------------------------------------------- docker compose


def _published(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[0]) for p in service.get("ports", [])}


def test_compose_has_minio_prefect_and_a_ray_head_on_their_ports():
    services = _load("docker-compose.yaml")["services"]
    assert 9000 in _published(services["minio"])
    assert 4200 in _published(services["prefect-server"])
    assert {8265, 6379, 10001} <= _published(services["ray-head"])

    prefect_image = services["prefect-server"]["image"]
    assert prefect_image.startswith(f"prefecthq/prefect:{importlib.metadata.version('prefect')}-")
    assert prefect_image.startswith(f"prefecthq/prefect:{_pinned('prefect')}-")
    assert not services["minio"]["image"].endswith(":latest")

    build = services["ray-head"]["build"]
    assert (INFRA / build["context"] / build["dockerfile"]).resolve() == INFRA / "Dockerfile"
    for service in ("prefect-worker", "ray-head"):  # flows run by the worker and by Ray Jobs
        env = services[service]["environment"]
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["PREFECT_API_URL"].startswith("http://prefect-server:4200/")
        assert env["RAY_AUTH_MODE"] == "token"
    # The GPU worker gets the laptop's GPU through a device reservation.
    (device,) = services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def _env_items(services: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for name, service in services.items():
        env = service.get("environment", {})
        pairs = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
        for key, value in pairs:
            yield name, key, str(value)


def test_compose_takes_every_secret_from_the_environment():
    services = _load("docker-compose.yaml")["services"]
    secrets = [(s, k, v) for s, k, v in _env_items(services) if SECRET_NAME.search(k)]
    assert secrets, "the compose file has no credentials at all?"
    for service, key, value in secrets:
        assert ENV_SUBSTITUTION.match(value), f"{service}: {key} holds a literal value"


def test_compose_worker_serves_the_pool_the_prefect_deployments_use():
    command = _load("docker-compose.yaml")["services"]["prefect-worker"]["command"]
    pool = command[command.index("--pool") + 1]
    pools = {d["work_pool"]["name"] for d in _load("prefect.yaml")["deployments"]}
    assert pools == {pool}


# ---------------------------------------------------------------- prefect.yaml


def test_prefect_yaml_deploys_the_annotate_flow_on_a_valid_cron():
    from prefect.client.schemas.schedules import CronSchedule

    project = _load("prefect.yaml")
    assert project["prefect-version"] == importlib.metadata.version("prefect")
    # The flows' parameters: annotate_dataset(src, dst, config=None, profile=None) and
    # index_dataset(dst, config=None).
    parameters = {deployments.FLOW_ENTRYPOINT: {"src", "dst", "config", "profile"},
                  deployments.INDEX_FLOW_ENTRYPOINT: {"dst", "config"}}
    assert {d["entrypoint"] for d in project["deployments"]} == set(parameters)
    for deployment in project["deployments"]:
        assert set(deployment["parameters"]) == parameters[deployment["entrypoint"]]
        for schedule in deployment["schedules"]:
            CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises if invalid
    scheduled = [d for d in project["deployments"] if d["schedules"]]
    assert scheduled and all(d.get("concurrency_limit") == 1 for d in scheduled)
    pull_dir = project["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert re.search(rf"^WORKDIR {re.escape(pull_dir)}$", _dockerfile(), re.MULTILINE)


def test_prefect_yaml_rejects_a_bad_cron():
    # The check above can fail: Prefect refuses a malformed cron string.
    from prefect.client.schemas.schedules import CronSchedule

    with pytest.raises(ValueError):
        CronSchedule(cron="61 * * * *", timezone="UTC")


# ---------------------------------------------------------------- all files


def _infra_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_no_credentials_are_written_into_infra_files():
    aws_key_id = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
    for path in _infra_files():
        text = path.read_text()
        assert not aws_key_id.search(text), path
        assert "minioadmin" not in text, f"{path}: MinIO's default credentials"
        for match in re.finditer(r"^\s*([A-Z_]*(?:SECRET|PASSWORD|TOKEN)[A-Z_]*)\s*[:=]\s*(\S+)", text, re.M):
            value = match.group(2).strip("\"'")
            assert value.startswith("${") or value.startswith("$("), f"{path}: {match.group(0)}"


def test_infra_readme_documents_every_file():
    readme = (INFRA / "README.md").read_text()
    for path in _infra_files():
        if path.name != "README.md":
            assert str(path.relative_to(INFRA)) in readme, f"{path} is not described in infra/README.md"


# ---------------------------------------------------------------- Prefect deployments (deployments.py)

@flow(name="annotate-dataset")
def annotate_dataset(src: str, dst: str, config: dict | None = None, profile: str | None = None) -> None:
    """Same signature as samflow.flows.annotate.annotate_dataset; deployments only need that."""


def _schema_errors(parameters: dict[str, Any], target=annotate_dataset) -> list[Any]:
    # What the Prefect API checks when a deployment enforces its parameter schema.
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    return validate(parameters, parameter_schema(target.fn).model_dump_for_openapi())


def _write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_deployment_is_scheduled_by_the_config_cron(tmp_path):
    path = _write_config(tmp_path, "schedule: '30 1 * * *'\nstages:\n  segment: {batch_size: 8}\n")
    deployment = deployments.build_deployment(
        "s3://b/raw", "s3://b/out", config=path, profile="tiny", timezone="Europe/Paris",
        work_pool_name="samflow", flow=annotate_dataset,
    )
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == "30 1 * * *" and schedule.schedule.timezone == "Europe/Paris"
    assert deployment.parameters == {
        "src": "s3://b/raw", "dst": "s3://b/out", "profile": "tiny",
        # only what the file set: the flow applies defaults and the profile itself
        "config": {"schedule": "30 1 * * *", "stages": {"segment": {"batch_size": 8}}},
    }
    assert deployment.concurrency_limit == 1
    assert deployment.work_pool_name == "samflow"
    assert deployment.entrypoint.endswith(".annotate_dataset")  # module path, cwd-independent
    assert _schema_errors(deployment.parameters) == []
    # The config sent to the flow rebuilds the same run config.
    assert load_config(path) == deployments.resolve_config(deployment.parameters["config"])


def test_parameter_schema_check_catches_a_wrong_parameter():
    assert _schema_errors({"src": "a", "dst": "b", "config": "not-a-mapping"})


def test_deployment_without_schedule_runs_only_on_demand():
    deployment = deployments.build_deployment("a", "b", flow=annotate_dataset)
    assert not deployment.schedules
    # local paths are frozen absolute: the runs start later, elsewhere
    assert deployment.parameters == {"src": os.path.abspath("a"), "dst": os.path.abspath("b"), "config": None,
                                     "profile": None}


@pytest.mark.parametrize("cron", ["61 * * * *", "every night"])
def test_bad_cron_in_config_is_refused(cron):
    with pytest.raises(ValueError):
        deployments.build_deployment("a", "b", config={"schedule": cron}, flow=annotate_dataset)


def test_prefect_yaml_and_python_deployments_agree():
    project = _load("prefect.yaml")
    for deployment in project["deployments"]:
        assert deployment["entrypoint"] in (deployments.FLOW_ENTRYPOINT, deployments.INDEX_FLOW_ENTRYPOINT)
        assert deployment["work_pool"]["name"] == deployments.DEFAULT_WORK_POOL
    for entrypoint, function, module in (
        (deployments.FLOW_ENTRYPOINT, deployments.FLOW_FUNCTION, deployments.FLOW_MODULE),
        (deployments.INDEX_FLOW_ENTRYPOINT, deployments.INDEX_FLOW_FUNCTION, deployments.INDEX_FLOW_MODULE),
    ):
        assert entrypoint.removesuffix(".py:" + function).replace("/", ".") == module


def test_real_annotate_flow_deploys_with_the_contract_signature():
    # Skips only while the flow's own imports are not all merged yet.
    pytest.importorskip("samflow.flows.annotate", reason="samflow.flows.annotate not importable yet")
    deployment = deployments.build_deployment("s3://b/raw", "s3://b/out", config={"schedule": "0 2 * * *"})
    assert deployment.entrypoint == f"{deployments.FLOW_MODULE}.{deployments.FLOW_FUNCTION}"
    assert _schema_errors(deployment.parameters, deployments.load_annotate_flow()) == []
    flows = {deployments.FLOW_ENTRYPOINT: deployments.load_annotate_flow(),
             deployments.INDEX_FLOW_ENTRYPOINT: deployments.load_index_flow()}
    for deployment_yaml in _load("prefect.yaml")["deployments"]:
        assert _schema_errors(deployment_yaml["parameters"], flows[deployment_yaml["entrypoint"]]) == []
    index = deployments.build_index_deployment("s3://b/out", config={"index": {"schedule": "0 5 * * *"}})
    assert index.entrypoint == f"{deployments.INDEX_FLOW_MODULE}.{deployments.INDEX_FLOW_FUNCTION}"
    assert _schema_errors(index.parameters, deployments.load_index_flow()) == []


@pytest.mark.slow
def test_deployment_registers_on_a_real_prefect_server(prefect_server):
    import asyncio

    from prefect.client.orchestration import get_client

    deployment = deployments.build_deployment(
        "s3://b/raw", "s3://b/out", config={"schedule": "*/15 * * * *"}, name="nightly",
        flow=annotate_dataset,
    )

    async def read_back() -> Any:
        async with get_client() as client:
            return await client.read_deployment_by_name("annotate-dataset/nightly")

    deployment_id = deployment.apply()
    stored = asyncio.run(read_back())
    assert stored.id == deployment_id
    assert [s.schedule.cron for s in stored.schedules] == ["*/15 * * * *"]
    assert stored.parameters == deployment.parameters
    assert stored.concurrency_limit == 1 or stored.global_concurrency_limit.limit == 1
    assert stored.enforce_parameter_schema is True
