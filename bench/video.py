"""Video: decoded-and-sampled frames/s (CPU), tracked frames/s for both tracker backends (tiny
SAM 2 and tiny SAM 3 tracker + tiny SAM seeds on CPU; the published SAM 2 and SAM 3 tracker
architectures with random weights where a GPU is present), and
peak RSS of a short vs a 10x longer video through decode and track: memory must not grow with
length (target: within 15 %).

    python bench/video.py [--smoke | --quick]

Each memory case runs in a fresh process (peak RSS is per process) that streams one synthetic
video through the decode stage and the track stage exactly as the pipeline's actors do, chunk
by chunk, dropping each chunk once consumed. Prints figures; the last line is the JSON summary,
also written to bench/results/video.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, result

from samflow.schemas import masks as mask_column

SIZES = {  # (decode seconds of video, decode size, track frames, memory short/long minutes)
    "smoke": {"decode_s": 5, "decode_wh": (320, 240), "track_frames": 8, "memory_min": (0.1, 1.0), "memory_fps": 2.0},
    "quick": {"decode_s": 30, "decode_wh": (640, 360), "track_frames": 32, "memory_min": (1.0, 10.0), "memory_fps": 0.5},
    "full": {"decode_s": 60, "decode_wh": (1280, 720), "track_frames": 96, "memory_min": (1.0, 10.0), "memory_fps": 1.0},
}
RATE = 30


def write_video(path: Path, seconds: float, width: int, height: int, rate: int = RATE) -> int:
    """H.264 MP4 of a square moving over a gradient (cheap to make, real work to decode)."""
    import av

    n = max(1, int(seconds * rate))
    base = np.zeros((height, width, 3), np.uint8)
    base[:, :, 1] = np.linspace(0, 200, width, dtype=np.uint8)[None, :]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 2 * rate
        side = max(4, height // 4)
        for i in range(n):
            frame = base.copy()
            x = (i * 3) % max(1, width - side)
            frame[height // 3 : height // 3 + side, x : x + side] = (220, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return n


def _input_cfg(**video):
    from samflow.config import InputConfig, VideoSampling

    return InputConfig(video=VideoSampling(**video))


def bench_decode(tmp: Path, size: dict) -> list[dict]:
    from samflow.config import StorageConfig
    from samflow.media.decode import DecodeStage
    from samflow.store.storage import StorageSource

    width, height = size["decode_wh"]
    path = tmp / "decode.mp4"
    total = write_video(path, size["decode_s"], width, height)
    results = []
    for label, policy in (("every frame", {"mode": "every_n", "every_n": 1}), ("fps=1", {"mode": "fps", "fps": 1.0}),
                          ("keyframes", {"mode": "keyframes"})):
        stage = DecodeStage(StorageSource(StorageConfig()), _input_cfg(**policy))
        batch = {"uri": np.array([str(path)], dtype=object), "size": np.array([path.stat().st_size])}
        start = time.perf_counter()
        sampled = sum(len(chunk["uri"]) for chunk in stage.stream(batch))
        elapsed = time.perf_counter() - start
        case = f"decode {width}x{height} H.264, {label}"
        print(f"{case}: {sampled} sampled of {total} frames in {elapsed:.2f}s")
        results.append(result(case, "sampled_frames_per_s", sampled / elapsed, "frames/s"))
        results.append(result(case, "source_frames_per_s", total / elapsed, "frames/s"))
    return results


def _track_stage(model: str, chunk_frames: int, fps: float, device: str | None = None):
    from samflow.actors.stage import StageContext
    from samflow.actors.track import TrackStage
    from samflow.config import config_from
    from samflow.store.storage import StorageSource

    cfg = config_from({"stages": {"track": {"model": model, "reseed_s": 5.0}}}, profile="tiny")
    cfg = cfg.model_copy(update={"input": _input_cfg(mode="fps", fps=fps, chunk_frames=chunk_frames)})
    return TrackStage(cfg.stages.track, StageContext(run=cfg, store=StorageSource(cfg.storage)), device=device)


def _pending(path: Path) -> dict[str, np.ndarray]:
    from samflow.config import StorageConfig
    from samflow.media.decode import DecodeStage
    from samflow.store.storage import StorageSource

    decode = DecodeStage(StorageSource(StorageConfig()), _input_cfg(), defer_videos=True)
    batch = decode({"uri": np.array([str(path)], dtype=object), "size": np.array([path.stat().st_size])})
    batch["masks"] = mask_column.empty(1)  # as the segment stage leaves a video row
    return batch


def run_track(path: Path, model: str, fps: float, device: str | None = None, warm: bool = False
              ) -> tuple[int, float, int]:
    """Stream one video through the track stage: (frames, seconds, masks). One torch thread,
    as in a Ray actor with num_cpus=1 (Ray sets OMP_NUM_THREADS from it). ``warm``: time a
    second pass, after model loading and the kernels' first-call set-up."""
    import torch

    torch.set_num_threads(1)
    stage = _track_stage(model, chunk_frames=16, fps=fps, device=device)
    for _ in range(2 if warm else 1):
        frames = masks = 0
        start = time.perf_counter()
        for chunk in stage(_pending(path)):
            frames += int(sum(1 for e in chunk["error_type"] if e == ""))
            masks += int(mask_column.counts(chunk["masks"]).sum())
        elapsed = time.perf_counter() - start
    return frames, elapsed, masks


def bench_track(tmp: Path, size: dict) -> list[dict]:
    import torch

    path = tmp / "track.mp4"
    write_video(path, size["track_frames"] / 5.0, 128, 96)
    models = [("tiny://sam2", None), ("tiny://sam3", None)]  # the two backends: SAM 2 and SAM 3's tracker
    if torch.cuda.is_available():  # the published default architectures, random weights
        models += [("random://sam2", "cuda"), ("random://sam3", "cuda")]
    results = []
    for model, device in models:
        try:
            frames, elapsed, masks = run_track(path, model, fps=5.0, device=device, warm=True)
        except Exception as exc:  # noqa: BLE001 - a model this build cannot make is reported, not fatal
            print(f"track {model}: skipped ({type(exc).__name__}: {exc})")
            continue
        case = f"track 128x96 {model} on {device or 'cpu'}"
        print(f"{case}: {frames} frames, {masks} masks in {elapsed:.2f}s")
        results.append(result(case, "tracked_frames_per_s", frames / elapsed, "frames/s"))
    return results


def _child(path: str, fps: float, model: str) -> None:
    """One memory case, in its own process: stream the video through decode and track."""
    frames, elapsed, _ = run_track(Path(path), model, fps=fps)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"frames": frames, "seconds": elapsed, "peak_rss_mib": peak_kib / 1024}))


def bench_memory(tmp: Path, size: dict) -> list[dict]:
    paths = []
    for minutes in size["memory_min"]:
        paths.append(tmp / f"memory-{minutes}min.mp4")
        write_video(paths[-1], minutes * 60, 96, 64, rate=10)
    results = []
    for model in ("tiny://sam2", "tiny://sam3"):
        peaks = []
        for minutes, path in zip(size["memory_min"], paths):
            out = subprocess.run([sys.executable, __file__, "--child", str(path), str(size["memory_fps"]), model],
                                 check=True, capture_output=True, text=True)
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            peaks.append(figures["peak_rss_mib"])
            case = f"decode+track {model} {minutes:g} min 96x64 video at {size['memory_fps']:g} fps"
            print(f"{case}: {figures['frames']} frames, peak RSS {figures['peak_rss_mib']:.0f} MiB")
            results.append(result(case, "peak_rss", figures["peak_rss_mib"], "MiB"))
        growth = (peaks[1] - peaks[0]) / peaks[0] * 100
        print(f"{model} peak RSS, {size['memory_min'][1]:g} min vs {size['memory_min'][0]:g} min: {growth:+.1f} % "
              "(target: within 15 %)")
        results.append(result(f"peak RSS long vs short video, {model}", "growth", growth, "%"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], float(args.child[1]), args.child[2])
        return
    size = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    with tempfile.TemporaryDirectory() as tmp:
        results = bench_decode(Path(tmp), size) + bench_track(Path(tmp), size) + bench_memory(Path(tmp), size)
    emit("video", results)


if __name__ == "__main__":
    main()
