"""What a user sees from a sample run through the real CLI (a subprocess, not a TTY): a progress
line, a summary, no library chatter; then the run history and one run's report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from samflow.flows.sample_data import write_sample_dataset
from tests.cli_summary import summary_of

ROOT = Path(__file__).resolve().parents[1]
CHATTER = ("HTTP Request", "logging_progress", "Execution plan", "streaming_executor", "Started a local Ray",
           "Token authentication", "Deprecat", "prefect.flow_runs", "Traceback")


def samflow(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "samflow.flows.cli", *args], capture_output=True, text=True,
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
    assert {s["stage"] for s in report["stages"]} == {"segment", "track"}  # track: in the default graph
    assert len(report["models"]["segment"]["checkpoint_sha256"]) == 64

    missing = samflow("runs", str(out), "nope")
    assert missing.returncode == 2 and run_id in missing.stderr and "Traceback" not in missing.stderr


def test_progress_figures_and_bottleneck_from_commits():
    import io

    from samflow.flows.catalog import ShardResult
    from samflow.flows.progress import RunProgress

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
