"""A burst of image jobs through `make serve`'s local queue (issue 10): a report, never a gate.

Starts the dev stack as `make serve` does (bench/local_stack.py: fresh state, the offline `local` provider,
the worker in-process against the emulated SQS queue), then submits --jobs requests at once over HTTP with
`Prefer: respond-async` from 8 keep-alive clients: generations (dall-e-2 256x256, url), and --failures edits
whose PNG has a valid structure but undecodable pixels, which the provider refuses at run time (a failed
job, to be refunded). It polls `GET /v1/images/jobs` until every job is final and reports:

- jobs/s: jobs finished per second, from the first submit to the last job seen final;
- money: the balance's drop equals the usage's charge equals delivered images x price (charged ==
  delivered), the usage's refunds equal failed jobs x price (each failure refunded exactly once);
- `imagegate reconcile --all` against the emulator: exit status 0.

Prints `TARGET jobs burst: MET|NOT MET ...` for bench/run.py. Per-key and per-account concurrency limits are
off for the run (a queued job holds a slot until it ends, docs/jobs.md); the
images-per-minute limits are raised as bench/local_stack.py raises them.
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path

import httpx
from local_stack import stack_aws_env, start_stack, stop_stack
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PRICE = 16_000  # dall-e-2 256x256, micro-USD: generations and edits alike
CLIENTS = 8
PATIENCE_S = 600  # past this the report says the burst did not finish
TARGET_JOBS = 100


def undecodable_png(size: int = 256) -> bytes:
    """A PNG whose chunks are all intact (CRCs included) but whose compressed pixels are garbage: it passes
    the submit's header checks, and the provider cannot decode it when the job runs."""
    buf = io.BytesIO()
    Image.new("RGBA", (size, size), (30, 90, 200, 255)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    at = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[at : at + 4])
    body = b"\x78\x9c" + b"\xff" * (length - 2)
    data[at + 8 : at + 8 + length] = body
    data[at + 8 + length : at + 12 + length] = struct.pack(">I", zlib.crc32(b"IDAT" + body))
    return bytes(data)


def submit_all(base: str, key: str, jobs: int, failures: int) -> tuple[list[str], list[int]]:
    """Every request sent at once from CLIENTS threads; the job ids and any non-202 statuses."""
    headers = {"Authorization": f"Bearer {key}", "Prefer": "respond-async"}
    bad = undecodable_png()
    work = ["edit"] * failures + ["generate"] * (jobs - failures)
    ids: list[str] = []
    refused: list[int] = []
    lock = threading.Lock()

    def client(share: list[str]) -> None:
        with httpx.Client(base_url=f"{base}/v1", headers=headers, timeout=120) as http:
            for kind in share:
                if kind == "generate":
                    body = {"model": "dall-e-2", "prompt": f"fox {uuid.uuid4().hex}", "size": "256x256"}
                    response = http.post("/images/generations", json=body)
                else:
                    response = http.post(
                        "/images/edits",
                        data={"model": "dall-e-2", "prompt": "a kite", "size": "256x256"},
                        files={"image": ("bad.png", bad, "image/png")},
                    )
                with lock:
                    if response.status_code == 202:
                        ids.append(response.json()["id"])
                    else:
                        refused.append(response.status_code)

    threads = [threading.Thread(target=client, args=(work[i::CLIENTS],)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids, refused


def all_jobs(http: httpx.Client) -> list[dict]:
    found, after = [], None
    while True:
        page = http.get("/images/jobs", params={"limit": 100, **({"after": after} if after else {})}).json()
        found += page["data"]
        if not page["has_more"]:
            return found
        after = page["last_id"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=120, help="jobs in the burst (default 120)")
    parser.add_argument("--failures", type=int, default=12, help="of which fail at run time (default 12)")
    args = parser.parse_args(argv)
    limits = {"IMAGEGATE_MAX_CONCURRENT": "0", "IMAGEGATE_ACCOUNT_MAX_CONCURRENT": "0"}
    with tempfile.TemporaryDirectory() as state:
        proc, base, key, _ = start_stack(state, **limits)
        try:
            with httpx.Client(
                base_url=f"{base}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60
            ) as http:
                before = http.get("/balance").json()["balance_micros"]
                started = time.perf_counter()
                ids, refused = submit_all(base, key, args.jobs, args.failures)
                submitted_s = time.perf_counter() - started
                while True:
                    jobs = [j for j in all_jobs(http) if j["id"] in set(ids)]
                    open_ = [j for j in jobs if j["status"] in ("queued", "in_progress")]
                    if not open_ or time.perf_counter() - started > PATIENCE_S:
                        break
                    time.sleep(0.5)
                elapsed = time.perf_counter() - started
                account = http.get("/balance", params={"days": 1}).json()
            reconcile = subprocess.run(
                [sys.executable, "-m", "imagegate.cli", "reconcile", "--all"],
                # The stack's endpoints (DynamoDB's may be Dynoxide's, apart from moto's) and credentials.
                env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | stack_aws_env(state),
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
        finally:
            stop_stack(proc)

    by_status: dict[str, int] = {}
    for job in jobs:
        by_status[job["status"]] = by_status.get(job["status"], 0) + 1
    delivered = sum(len(j["result"]["data"]) for j in jobs if j["status"] == "succeeded")
    failed = by_status.get("failed", 0)
    usage = account["usage"]["data"]
    charged = sum(row["charged_micros"] for row in usage)
    refunded = sum(row["refunded_micros"] for row in usage)
    drop = before - account["balance_micros"]
    finished = len(jobs) - len(open_)
    rate = finished / elapsed if elapsed else 0.0
    print(f"jobs submitted: {len(ids)} in {submitted_s:.2f} s; refused at submit: {refused or 'none'}")
    print(f"jobs final: {finished}/{len(ids)} in {elapsed:.2f} s -> {rate:.1f} jobs/s; by status {by_status}")
    print(f"delivered {delivered} images x ${PRICE / 1e6:.3f} = {delivered * PRICE} micro-USD")
    print(f"charged (usage) {charged}, balance drop {drop}, refunded (usage) {refunded} for {failed} failed")
    print(f"reconcile --all: exit {reconcile.returncode}; {reconcile.stdout.strip().splitlines()[-1:]}")
    exact = charged == drop == delivered * PRICE and refunded == failed * PRICE
    met = (
        len(ids) >= TARGET_JOBS
        and finished == len(ids)
        and failed == args.failures
        and exact
        and reconcile.returncode == 0
    )
    verdict = "MET" if met else "NOT MET"
    print(
        f"TARGET jobs burst (>= {TARGET_JOBS} jobs, exact money, reconcile clean): {verdict} "
        f"{finished} jobs at {rate:.1f} jobs/s, charged == delivered: {exact}, reconcile exit "
        f"{reconcile.returncode}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
