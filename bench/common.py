"""Shared bench plumbing: the result line (docs/architecture.md, "Stable interfaces"), and process-tree memory sampling."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Self

RESULTS_DIR = Path(__file__).parent / "results"


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def emit(bench: str, results: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write bench/results/<bench>.json and print the one-line JSON summary last; ``extra``: more
    top-level keys (a bench's run details)."""
    payload = {"bench": bench, "device": device_name(), "results": results, **(extra or {})}
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{bench}.json").write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload))
    return payload


def annotate_env(code: Path | None = None) -> dict[str, str]:
    """Environment for a `samflow annotate` subprocess: its own ephemeral Prefect server, given
    time to start on a loaded machine; ``code``, when given, is the checkout whose samflow runs."""
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return env


def result(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"case": case, "metric": metric, "value": round(float(value), 4), "unit": unit}


class _TreeSampler:
    """Samples a process and all its descendants (Ray's raylet and workers, Prefect's server) on a
    background thread while the ``with`` block runs; a subclass says what one sample records."""

    def __init__(self, pid: int, interval_s: float) -> None:
        import psutil  # here, not at the top: bench/gpu.py runs where only torch and transformers are

        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval_s)

    def _processes(self) -> list[Any]:
        import psutil

        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _sample(self) -> None:
        raise NotImplementedError


class TreeMemory(_TreeSampler):
    """Peak proportional set size (PSS) of a process and all its descendants: shared pages (torch's
    libraries, Ray's plasma store mapped by every worker) count once over the tree, not once per
    process as summed RSS would."""

    def __init__(self, pid: int, interval_s: float = 0.3) -> None:
        super().__init__(pid, interval_s)
        self.peak_bytes = 0

    def _sample(self) -> None:
        import psutil

        total = 0
        for proc in self._processes():
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.peak_bytes = max(self.peak_bytes, total)


class TreeCpu(_TreeSampler):
    """CPU seconds (user + system) of a process and all its descendants, sampled over time, so that
    a window of a run (its start-up, its stream) splits by process group: which share of the
    machine went where. Times count from the root process's start, as a run manifest's do."""

    GROUPS = ("model", "command", "prefect server", "ray system", "ray workers", "other")

    def __init__(self, pid: int, model_marker: str, interval_s: float = 0.2) -> None:
        super().__init__(pid, interval_s)
        self.origin = self.root.create_time()
        self.model_marker = model_marker
        self.groups: dict[int, str] = {}
        self.series: dict[int, list[tuple[float, float]]] = {}

    def window(self, start_s: float, end_s: float) -> dict[str, float]:
        """CPU seconds per group between two times (seconds since the root's start)."""
        totals = dict.fromkeys(self.GROUPS, 0.0)
        for pid, points in self.series.items():
            totals[self.groups[pid]] += _cpu_at(points, end_s) - _cpu_at(points, start_s)
        return totals

    def _sample(self) -> None:
        import psutil

        for proc in self._processes():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    title = " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            now = time.time() - self.origin
            self.series.setdefault(proc.pid, []).append((now, times.user + times.system))
            if self.groups.get(proc.pid) != "model":  # a worker is renamed when it becomes an actor
                self.groups[proc.pid] = self._group(proc.pid, title)

    def _group(self, pid: int, title: str) -> str:
        if pid == self.root.pid:
            return "command"
        if self.model_marker in title:
            return "model"
        if "uvicorn" in title and "prefect" in title:
            return "prefect server"
        if title.startswith("ray::") and not title.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent")):
            return "ray workers"
        if "ray" in title:
            return "ray system"
        return "other"


def _cpu_at(points: list[tuple[float, float]], at_s: float) -> float:
    """A process's CPU seconds at a time, from its samples: linear between two, 0 before its first
    (it started after the last sample without it), its last value after its end."""
    if at_s < points[0][0]:
        return 0.0
    for (t0, c0), (t1, c1) in zip(points, points[1:]):
        if at_s <= t1:
            return c0 + (c1 - c0) * (at_s - t0) / max(t1 - t0, 1e-9)
    return points[-1][1]


class PeakGrowth:
    """How far this process's memory rose above where it stood when the block began: on CUDA the
    allocator's peak, on Linux the kernel's resident high-water mark (VmHWM, reset through
    /proc/self/clear_refs, so a spike between two samples still counts). Freed heap memory is
    handed back first (malloc_trim) so that reusing it cannot hide growth. ``None`` elsewhere."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.grew_bytes: int | None = None
        self._start = 0

    def __enter__(self) -> "PeakGrowth":
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        elif _LINUX_STATUS.exists():
            _libc().malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the high-water mark to the current RSS
            self._start = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.grew_bytes = torch.cuda.max_memory_allocated() - self._start
        elif _LINUX_STATUS.exists():
            self.grew_bytes = _status_kb("VmHWM") * 1024 - self._start


_LINUX_STATUS = Path("/proc/self/status")


def _status_kb(field: str) -> int:
    for line in _LINUX_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _libc():
    import ctypes

    return ctypes.CDLL("libc.so.6")
