"""Shared fixtures. S3 tests run against moto's real S3 protocol server on localhost, reached
through the same s3fs/botocore code path as a production bucket."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.helpers.cluster_fixtures"]

# The longest modules, longest first (from --durations). The suite runs in two processes, each
# taking whole modules (pyproject: -n 2 --dist loadfile); started first, the long ones overlap
# and the session ends on short modules instead of one long module running alone.
LONGEST_MODULES = (
    "tests/test_benches.py",
    "tests/train/test_train_cli.py",
    "tests/test_readme.py",
    "tests/flows/test_engine_round_cli.py",
    "tests/flows/test_schedule_cli.py",
    "tests/pipeline/test_resources.py",
    "tests/flows/test_deploy_cli.py",
    "tests/flows/test_index_deploy.py",
    "tests/inputs/test_inputs.py",
    "tests/synth/test_synth.py",
    "tests/store/test_plan_history.py",
    "tests/pipeline/test_multinode.py",
    "tests/pipeline/test_reliability.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {module: index for index, module in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: modules stay whole


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3 endpoint URL (moto server on a free port). Sets dummy credentials, a region and
    ``AWS_ENDPOINT_URL`` for the session, and hides any real AWS config on this machine."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    no_aws_files = tmp_path_factory.mktemp("no-aws-config")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_CONFIG_FILE", str(no_aws_files / "config"))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(no_aws_files / "credentials"))
        env.delenv("AWS_PROFILE", raising=False)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def s3_bucket(s3_server: str) -> str:
    """A fresh bucket on the test server for each test module, as ``s3://name`` (module scope so
    module-scoped dataset fixtures can use it; tests in one module share it, under own prefixes)."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"
