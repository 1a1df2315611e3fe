"""`make serve` under sustained load (issue 12, target 4): a report, never a gate.

Starts the dev stack exactly as `make serve` does (`python -m imagegate.local.devserver`, fresh state,
ports 0, the offline `local` provider) and drives it over HTTP with keep-alive clients:
POST /v1/images/generations {model: dall-e-2, size: 256x256, response_format: url} (url: every request also
writes its image to the emulated S3, the growth we want to see).

Measured in the same run, early (right after a short warm-up) and late (after --requests in total):
- per-request time: the mean and p50 of --window requests sent one at a time (concurrency 1);
- throughput at concurrency 8 (and 1) over --window * 4 requests;
- RSS of the dev server and every emulator it started (moto's child and Dynoxide) together (current and peak,
  from /proc), and each process's share.
The report names the DynamoDB the stack picked (Dynoxide where `make install` put it, else moto's;
`IMAGEGATE_DYNAMODB=moto python bench/local_stack.py` measures moto's).

Targets: late/early per-request time <= 1.5, RSS < 500 MB after --requests (10,000), and >= 30 requests/s at
concurrency 8 on 2 cores. Exit status is 0 either way: read the report. Run the baseline from another
checkout by putting its package first, e.g. `PYTHONPATH=../old/layers/imagegate python bench/local_stack.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 120
TARGET_SLOWDOWN = 1.5
TARGET_RSS_MB = 500
TARGET_RPS = 30.0


def start_stack(state_dir: str, **extra_env: str) -> tuple[subprocess.Popen, str, str, str]:
    """`make serve` with fresh state on free ports; `extra_env` overrides its settings (bench/jobs.py).
    (process, base URL, dev key, the banner's line naming its DynamoDB)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IMAGEGATE_", "OPENAI_"))}
    if "IMAGEGATE_DYNAMODB" in os.environ:  # which DynamoDB to measure is the caller's choice
        env["IMAGEGATE_DYNAMODB"] = os.environ["IMAGEGATE_DYNAMODB"]
    env.update(
        PORT="0",
        IMAGEGATE_AWS_PORT="0",
        IMAGEGATE_DEV_STATE=state_dir,
        IMAGEGATE_DEV_BALANCE="1000000",  # $1M: 10,000 requests at $0.016 leave plenty
        POWERTOOLS_LOG_LEVEL="WARNING",
        # Limits far above the load, still taken in every reserve (the same DynamoDB work as the defaults).
        IMAGEGATE_IMAGES_PER_MINUTE="1000000",
        IMAGEGATE_ACCOUNT_IMAGES_PER_MINUTE="1000000",
    )
    env.update(extra_env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegate.local.devserver"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    lines: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("try:"):
            text = "\n".join(lines)
            key = re.search(r"^dev key:\s+(sk-ig-\S+)$", text, re.M)
            base = re.search(r"^base URL: (http://127\.0\.0\.1:\d+)/v1\s", text, re.M)
            dynamodb = re.search(r"^dynamodb: (.*)$", text, re.M)
            if key and base:
                return proc, base[1], key[1], dynamodb[1] if dynamodb else "unknown"
            break
    proc.kill()
    raise SystemExit(f"the dev stack did not start: {lines}")


def stack_aws_env(state_dir: str) -> dict[str, str]:
    """What `.imagegate/aws-env` exports for the admin CLI: endpoints (DynamoDB's apart) and credentials."""
    env = {}
    for line in (Path(state_dir) / "aws-env").read_text().splitlines():
        if line.startswith("export "):
            env.update(pair.split("=", 1) for pair in line.split()[1:])
    return env


def stop_stack(proc: subprocess.Popen) -> None:
    """Stop the dev server and its emulator (uvicorn waits for requests in flight, however slow)."""
    tree = process_tree(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        for pid in reversed(tree):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def process_tree(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        p = queue.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                queue.extend(int(c) for c in task.read_text().split())
    return pids


def rss_by_process(pid: int) -> dict[str, tuple[float, float]]:
    """(current, peak) resident set size in MB of `pid` and each of its descendants, by name and pid."""
    sizes = {}
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        kb = [int(fields.get(name, "0 kB").split()[0]) for name in ("VmRSS", "VmHWM")]
        sizes[f"{fields['Name'].strip()}[{p}]"] = (kb[0] / 1024, kb[1] / 1024)
    return sizes


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of `pid` and its descendants together, in MB."""
    sizes = rss_by_process(pid).values()
    return sum(s[0] for s in sizes), sum(s[1] for s in sizes)


class Client:
    """One keep-alive connection; request() returns the seconds the request took."""

    def __init__(self, base: str, key: str, body: bytes) -> None:
        self._address = urlsplit(base)
        self._conn = self._connect()
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self._body = body

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(
            self._address.hostname, self._address.port, timeout=REQUEST_TIMEOUT_S
        )

    def reconnect(self) -> None:
        """A fresh connection: uvicorn closes one left idle for 5 s (between phases)."""
        self._conn.close()
        self._conn = self._connect()

    def request(self) -> float:
        start = time.perf_counter()
        self._conn.request("POST", "/v1/images/generations", self._body, self._headers)
        response = self._conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
        return elapsed

    def close(self) -> None:
        self._conn.close()


def run(clients: list[Client], count: int) -> tuple[float, list[float]]:
    """Send `count` requests spread over the clients, each client one at a time; (wall seconds, latencies)."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    remaining = [count]

    def worker(client: Client) -> None:
        while True:
            with lock:
                if remaining[0] <= 0 or errors:
                    return
                remaining[0] -= 1
            try:
                elapsed = client.request()
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                latencies.append(elapsed)

    for client in clients:
        client.reconnect()
    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"a request failed: {errors[0]}")
    return wall, latencies


def measure(name: str, one: Client, eight: list[Client], window: int, pid: int) -> dict[str, float]:
    _, lat = run([one], window)
    wall1, _ = run([one], window)
    wall8, _ = run(eight, window * 4)
    current, peak = rss_mb(pid)
    shares = ", ".join(f"{name} {mb:.0f}" for name, (mb, _) in rss_by_process(pid).items())
    figures = {
        "mean_ms": statistics.fmean(lat) * 1000,
        "p50_ms": statistics.median(lat) * 1000,
        "p95_ms": statistics.quantiles(lat, n=20)[-1] * 1000,
        "rps_c1": window / wall1,
        "rps_c8": window * 4 / wall8,
        "rss_mb": current,
        "peak_rss_mb": peak,
    }
    print(
        f"{name:>6}: per request (c=1) mean {figures['mean_ms']:.1f} ms, p50 {figures['p50_ms']:.1f} ms,"
        f" p95 {figures['p95_ms']:.1f} ms; {figures['rps_c1']:.1f} req/s at c=1,"
        f" {figures['rps_c8']:.1f} req/s at c=8; RSS {current:.0f} MB (peak {peak:.0f} MB: {shares})",
        flush=True,
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000, help="requests in all, early to late")
    parser.add_argument("--window", type=int, default=100, help="requests per per-request-time window")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on the way out

    body = json.dumps(
        {"model": "dall-e-2", "prompt": "a lighthouse", "size": "256x256", "response_format": "url"}
    ).encode()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"local stack: {args.requests} requests, dall-e-2 256x256 response_format=url, local provider,"
        f" c={args.concurrency}, {cores} cores, Python {sys.version.split()[0]}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as state:
        proc, base, key, dynamodb = start_stack(state)
        print(f"dynamodb: {dynamodb}", flush=True)
        try:
            one = Client(base, key, body)
            eight = [Client(base, key, body) for _ in range(args.concurrency)]
            run([one], 10)  # warm-up: first render, connections, bytecode
            sent = 10
            early = measure("early", one, eight, args.window, proc.pid)
            sent += args.window * 6
            fill_start = time.perf_counter()
            while sent < args.requests - args.window * 6:
                chunk = min(1000, args.requests - args.window * 6 - sent)
                wall, _ = run(eight, chunk)
                sent += chunk
                current, _ = rss_mb(proc.pid)
                print(
                    f"  {sent:>6} requests: {chunk / wall:.1f} req/s at c={args.concurrency},"
                    f" RSS {current:.0f} MB, {time.perf_counter() - fill_start:.0f} s",
                    flush=True,
                )
            late = measure("late", one, eight, args.window, proc.pid)
            sent += args.window * 6
            for c in (one, *eight):
                c.close()
        finally:
            stop_stack(proc)

    slowdown = late["mean_ms"] / early["mean_ms"]
    slowdown_p50 = late["p50_ms"] / early["p50_ms"]
    rps = min(early["rps_c8"], late["rps_c8"])
    rss = max(late["rss_mb"], late["peak_rss_mb"])
    rows = [
        (
            f"per-request time after {sent} requests / first {args.window} (mean; p50 {slowdown_p50:.2f}x)",
            f"{slowdown:.2f}x",
            f"<= {TARGET_SLOWDOWN}x",
            slowdown <= TARGET_SLOWDOWN,
        ),
        (f"RSS after {sent} requests (peak)", f"{rss:.0f} MB", f"< {TARGET_RSS_MB} MB", rss < TARGET_RSS_MB),
        (
            f"requests/s at c={args.concurrency} (lower of early, late; {cores} cores)",
            f"{rps:.1f}",
            f">= {TARGET_RPS:.0f}",
            rps >= TARGET_RPS,
        ),
    ]
    print(f"\ntarget 4, a local stack that stays fast (DynamoDB: {dynamodb.split(' (')[0]}):")
    for what, measured, target, met in rows:
        print(f"  {what}: {measured} (target {target}): {'met' if met else 'NOT met'}")
    for what, measured, target, met in rows:  # the lines bench/run.py collects for `make bench`
        print(f"TARGET 4 {what.split(' (')[0]} ({target}): {'MET' if met else 'NOT MET'} {measured}")
    if args.json:
        summary = {"requests": sent, "dynamodb": dynamodb, "early": early, "late": late, "slowdown": slowdown}
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
