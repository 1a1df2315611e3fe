"""Memory a large multipart edit costs (issue 12, item 5): a report, never a gate.

Sixteen ~1 MB PNGs (noise, so they do not compress) posted as one edit to gpt-image-1.5 straight to the
in-process ASGI app in 64 KB body messages, as uvicorn delivers them (moto for AWS, the local provider
renders); `--chunk 0` sends the body whole, as Mangum does. Reports the peak above the baseline, as a
ratio to the payload (the multipart body's size), measured two ways:

- tracemalloc: Python allocations only (bytes objects: copies of the body and its parts). Pillow's pixel
  buffers are not traced.
- RSS: the high-water mark (VmHWM, reset through /proc/self/clear_refs; Linux only) of a fresh child
  process warmed up with a one-image edit, which also sees Pillow's decoded pixels and the rendered
  outputs. The child runs with a fixed glibc mmap threshold, so large buffers go back to the system when
  freed rather than staying in the heap and hiding the next request's peak.

Target: a peak of at most 2x the payload above the baseline.

    .venv/bin/python bench/uploads.py [--rounds 3] [--images 16] [--size-kb 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import statistics
import subprocess
import sys
import tracemalloc
from pathlib import Path

import httpx
from _inprocess import in_process, png, post_chunked

STATUS = Path("/proc/self/status")


def _kib(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size-kb", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=65536, help="bytes per ASGI body message")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    side = int(math.sqrt(args.size_kb * 1024 / 4))  # RGBA noise: ~4 bytes of PNG per pixel
    image = png(side, side, noise=True)
    data = {"model": "gpt-image-1.5", "prompt": "a lighthouse", "quality": "low", "size": "1024x1024"}
    with in_process({"funded": 100_000_000}, images_per_minute=10_000, max_body_bytes=64 * 2**20) as app:

        def encode(count: int) -> tuple[bytes, str]:
            """The multipart body, built before measuring: the client's copy is not the server's cost."""
            files = [("image[]", (f"i{i}.png", image, "image/png")) for i in range(count)]
            request = httpx.Request("POST", "http://x/", data=data, files=files)
            return request.read(), request.headers["content-type"]

        def post(body: bytes, content_type: str) -> int:
            headers = {**app.auth("funded"), "content-type": content_type}
            status, answer = asyncio.run(post_chunked(app.app, "/v1/images/edits", headers, body, args.chunk))
            assert status == 200, answer[:500]
            return len(body)

        if args.rss_child:
            post(*encode(1))  # warm-up: imports, boto3 clients, Pillow plugins
            body = encode(args.images)
            gc.collect()
            if not _reset_hwm():
                return
            base = _kib("VmRSS")
            payload = post(*body)
            print((_kib("VmHWM") - base) / payload)
            return
        body = encode(args.images)
        payload = post(*body)  # warm-up: imports, boto3 clients, Pillow plugins
        print(f"payload: {args.images} x {len(image)} bytes of PNG ({side}x{side}), body {payload} bytes")
        traced = []
        for _ in range(args.rounds):
            gc.collect()
            tracemalloc.start()
            base, _ = tracemalloc.get_traced_memory()
            post(*body)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            traced.append((peak - base) / payload)
        print(f"tracemalloc peak above baseline / payload: median {statistics.median(traced):.2f}")
    rss = []
    for _ in range(args.rounds):
        argv = [
            sys.executable,
            __file__,
            "--rss-child",
            "--images",
            str(args.images),
            "--size-kb",
            str(args.size_kb),
        ]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout.strip()
        if out:
            rss.append(float(out))
    if rss:
        ratio = statistics.median(rss)
        print(f"RSS high-water mark above baseline / payload: median {ratio:.2f}")
        # The line bench/run.py collects for `make bench`'s table of issue 12's targets.
        verdict = "MET" if ratio <= 2.0 else "NOT MET"
        print(f"TARGET 5 upload peak over payload (RSS, <= 2x): {verdict} {ratio:.2f}x")


if __name__ == "__main__":
    main()
