"""What a user sees from a sample run through the real CLI (a subprocess, not a TTY): a progress
line, a summary, no library chatter; then the run history and one run's report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from samflow.scenes.sample import write_sample_dataset
from tests.helpers.cli_summary import summary_of

ROOT = Path(__file__).resolve().parents[2]
CHATTER = ("HTTP Request", "logging_progress", "Execution plan", "streaming_executor", "Started a local Ray",
           "Token authentication", "Deprecat", "prefect.flow_runs", "Traceback")
# Ray's own lines: "(raylet) ...", "(autoscaler) ...", "(MapWorker(...) pid=123) ...", its C++ core's
# "[2026-01-01 10:00:00,123 I 123 123] logging.cc:..." and Ray Data's dataset / operator dumps.
RAY_LINE = re.compile(r"^(\x1b\[\d+m)?\(.*(raylet|autoscaler|pid=)"
                      r"|^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\]"
                      r"|Running Dataset|Operator \d|\bOperator\b.*\b(queued|running|blocks)\b")


def ray_lines(*streams: str) -> list[str]:
    return [line for stream in streams for line in stream.splitlines() if RAY_LINE.search(line)]


def samflow(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "samflow.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_sample_run_shows_progress_and_summary_then_runs_lists_and_reports_it(tmp_path):
    src = tmp_path / "in"
    write_sample_dataset(src, n_synthetic=2, seed=3, include_skimage=False)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    inputs = sum(1 for p in src.rglob("*") if p.is_file() and not any(part.startswith(("_", ".")) for part in p.relative_to(src).parts))
    out = tmp_path / "out"

    done = samflow("annotate", str(src), "--out", str(out), "--profile", "tiny", "--set", "stages.embed.enabled=false")
    assert done.returncode == 0, done.stderr
    result = summary_of(done.stdout)
    run_id = result["run_id"]
    assert result["counts"]["inputs"] == inputs
    assert result["counts"]["errors"] >= 1  # the broken file

    err = done.stderr
    for noise in CHATTER:
        assert noise not in err, f"{noise!r} in:\n{err}"
    assert ray_lines(done.stdout, err) == [], done.stdout + err
    assert json.loads(done.stdout) == result  # stdout holds the JSON summary alone
    progress = re.findall(r"samflow: (\d+)/(\d+) inputs \(\d+%\), [\d.]+ inputs/s, ETA \S+, errors (\d+)", err)
    assert progress, err
    assert progress[-1][0] == progress[-1][1] == str(inputs)  # the last line: all done
    assert int(progress[-1][2]) == result["counts"]["errors"]
    assert f"run {run_id}" in err and str(out) in err  # the summary names the run and the output
    assert "errors by type" in err and "decode" in err and "segment" in err

    listing = samflow("runs", str(out))
    assert listing.returncode == 0 and run_id in listing.stdout and "tiny://sam" in listing.stdout
    rows = json.loads(samflow("runs", str(out), "--json").stdout)
    assert [row["run_id"] for row in rows] == [run_id]
    assert rows[0]["inputs"] == inputs and rows[0]["errors"] == result["counts"]["errors"]
    assert rows[0]["masks"] == result["counts"]["annotations"]

    report = json.loads(samflow("runs", str(out), run_id, "--json").stdout)
    assert sum(kind["count"] for kind in report["errors"]) == result["counts"]["errors"]
    broken = [kind for kind in report["errors"] if kind["example_uri"].endswith("broken.png")]
    assert broken and broken[0]["stage"] == "decode" and broken[0]["example_message"]
    assert {s["stage"] for s in report["stages"]} == {"segment"}  # no videos among the inputs: no track stage
    assert len(report["models"]["segment"]["checkpoint_sha256"]) == 64

    missing = samflow("runs", str(out), "nope")
    assert missing.returncode == 2 and run_id in missing.stderr and "Traceback" not in missing.stderr


def test_progress_figures_and_bottleneck_from_commits():
    import io

    from samflow.cli.progress import RunProgress
    from samflow.store.catalog import ShardResult

    stream = io.StringIO()
    progress = RunProgress(stream, interval_s=3600, live=False)
    progress.planned("r1", total=10)
    # segment: 6 busy seconds on one worker; embed: 8 busy seconds over four workers
    progress.committed(ShardResult("s1", [f"u{i}" for i in range(4)], {"images": 3, "errors": 1}),
                       {"segment": [{"batch": "a", "busy_s": 6.0, "pid": 1}],
                        "embed": [{"batch": f"e{i}", "busy_s": 2.0, "pid": 10 + i} for i in range(4)]})
    progress.committed(ShardResult("s2", ["u4", "u5"], {"images": 2}),
                       {"segment": [{"batch": "a", "busy_s": 6.0, "pid": 1}]})  # same batch seen twice
    assert (progress.done, progress.errors) == (6, 1)
    assert progress.load.busy_s["segment"] == 6.0 and progress.load.bottleneck() == "segment"
    line = progress.line()
    assert line.startswith("samflow: 6/10 inputs (60%)") and "errors 1" in line and "bottleneck segment" in line
    assert progress.eta_s() is not None and progress.eta_s() > 0
    progress.close()
    assert stream.getvalue().splitlines()[-1].startswith("samflow: 6/10 inputs")

    bar_stream = io.StringIO()
    bar = RunProgress(bar_stream, live=True)  # the rich bar, drawn into a buffer
    bar.planned("r2", total=2)
    bar.committed(ShardResult("s3", ["a", "b"], {"images": 2}), {})
    bar.close()
    assert "2/2" in bar_stream.getvalue() and "annotate" in bar_stream.getvalue()


def test_ray_lines_are_recognised():
    # The check above can fail: each of these is a line Ray prints on a driver's terminal.
    for line in ("(raylet) A worker died or was killed while executing a task",
                 "\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have been started",
                 "(autoscaler) Warning: The following resource request cannot be scheduled right now",
                 "(MapWorker(SegmentStage) pid=4242) loading tiny://sam",
                 "[2026-12-01 18:10:04,553 I 15972 15972] logging.cc:303: Set ray log level",
                 "Running Dataset: dataset_3_0. Active & requested resources: 2/2 CPU",
                 "- Operator 1 ReadRange->MapBatches(f): 0 active, 0 queued"):
        assert ray_lines(line), line
    assert not ray_lines("samflow: 3/3 inputs (100%), 0.50 inputs/s, ETA 0s, errors 1, bottleneck segment")


def _raylet_says(text: str) -> None:
    """Publish a message to the driver the way the raylet reports a dead worker or too many
    workers (GCS error channel -> the driver's listener thread -> "(raylet) ..." on stdout). The
    token keeps Ray's log deduplication from holding a repeated line back."""
    import ray
    from ray._private.ray_constants import TESTING_NEVER_DEDUP_TOKEN
    from ray._private.utils import publish_error_to_driver

    publish_error_to_driver("samflow_test", f"{text} {TESTING_NEVER_DEDUP_TOKEN}",
                            ray._private.worker.global_worker.gcs_client)


def _wait_for(capfd, text: str, timeout_s: float = 30.0) -> float:
    import time

    started = time.monotonic()
    seen = ""
    while time.monotonic() - started < timeout_s:
        out, err = capfd.readouterr()
        seen += out + err
        if text in seen:
            assert any(text in line for line in ray_lines(seen)), seen
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not printed within {timeout_s} s: {seen!r}")


def test_quiet_driver_prints_no_raylet_lines_and_verbose_does(ray_cluster, capfd):
    """The raylet's messages to the driver ("(raylet) A worker died ...") reach the terminal
    whatever log_to_driver says; quiet mode keeps them off, -v shows them, and leaving the
    command puts Ray's default back for an in-process caller."""
    import time

    from samflow.cli import logs

    with logs.console(1):  # -v: shown (and the control for how long a message takes)
        logs.quiet_ray_data(1)
        _raylet_says("worker died: verbose")
        latency = _wait_for(capfd, "worker died: verbose")
    with logs.console(0):
        logs.quiet_ray_data(0)
        _raylet_says("worker died: quiet")
        time.sleep(max(2.0, 5 * latency))
        out, err = capfd.readouterr()
    assert "worker died: quiet" not in out + err and ray_lines(out, err) == [], out + err
    _raylet_says("worker died: after")  # after the command: Ray prints them again
    _wait_for(capfd, "worker died: after")


def test_native_stderr_goes_to_a_log_file_and_python_stderr_stays(capfd):
    """What C/C++ code writes to fd 2 (Ray's core worker logs in the driver) leaves the terminal
    in quiet mode; samflow's own lines (sys.stderr, the root logger) stay; -v changes nothing."""
    import logging

    from samflow.cli import logs

    capfd.readouterr()
    console = logging.StreamHandler(sys.stderr)  # what logging.basicConfig gives the CLI
    logging.getLogger().addHandler(console)
    try:
        with logs.console(0), logs.native_stderr_to_file(0, "test") as path:
            os.write(2, b"[2026-12-01 18:36:19,871 E 1 1] core_worker.cc:2465: native line\n")
            print("samflow: 1/2 inputs", file=sys.stderr)
            logging.getLogger("samflow.test").warning("samflow warning")
    finally:
        logging.getLogger().removeHandler(console)
    assert console.stream is sys.stderr
    out, err = capfd.readouterr()
    assert "native line" not in out + err and "samflow: 1/2 inputs" in err and "samflow warning" in err
    assert "native line" in path.read_text()
    path.unlink()
    os.write(2, b"after\n")  # fd 2 is the terminal again
    assert "after" in capfd.readouterr().err
    with logs.native_stderr_to_file(1, "test") as none:
        os.write(2, b"verbose native line\n")
    assert none is None and "verbose native line" in capfd.readouterr().err
