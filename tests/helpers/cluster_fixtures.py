"""Session fixtures for the real parts: one local Ray cluster and one Prefect server per run."""

from __future__ import annotations

import logging
import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A local Ray cluster (head node only); tests that need more nodes add and remove them.

    Depends on ``s3_server`` so that its endpoint and credentials are in the environment the
    Ray processes inherit (workers read S3 with the AWS chain, as on a real cluster).
    Logical CPUs exceed the machine's 2 cores so that decode, model and write pools can all be
    scheduled at once; the work itself is small.
    """
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 6, "include_dashboard": False},
    )
    ray.init(address=cluster.address, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def prefect_server():
    """Prefect's ephemeral API server with a throwaway database, for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # No network here, and none wanted from tests.
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        # Commands the tests start as subprocesses use this server too, instead of each starting
        # a temporary one of its own; tests of the unconfigured path remove it from their env.
        with pytest.MonkeyPatch.context() as env:
            env.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
            yield


@pytest.fixture(scope="session", autouse=True)
def shared_prefect_server(prefect_server):
    """Every test session has the one Prefect server, so no command a test starts pays for its own."""
    return prefect_server


@pytest.fixture(scope="session")
def quiet_s3_server(s3_server):
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log
    return s3_server


@pytest.fixture(scope="session")
def s3_fs(quiet_s3_server):
    """An s3fs client of the test S3 server (credentials from the environment, as users have)."""
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=quiet_s3_server, use_listings_cache=False)


@pytest.fixture(scope="session")
def tiny_run_template(tmp_path_factory, ray_cluster, prefect_server):
    """One ``tiny_annotate_run`` (no overrides) for the session: the folder holding its src and
    out. Tests read it through ``copy_of_run`` (tests/helpers/index_data.py), never in place."""
    from tests.helpers.index_data import tiny_annotate_run

    root = tmp_path_factory.mktemp("tiny-run")
    tiny_annotate_run(root)
    return root
