"""Money under concurrency through `make serve`'s own stack, on whichever DynamoDB it picked (Dynoxide where
`make install` put it, else moto's): many concurrent requests on a small balance are never overdrawn, and the
ledger reconciles, as the admin CLI sees it through `.imagegate/aws-env`.

The emulator's isolation is the point: a DynamoDB emulator that let two transactions interleave would let an
eleventh request through here.
"""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from imagegate.local.devserver import dynoxide_binary

from .test_devserver import banner_fields, start, stop

DALLE2_256 = 16_000
AFFORDABLE = 10
REQUESTS = 50
USAGE_WAIT_S = 10  # far more than the dev server's half-second reads of the stream take
BODY = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}
# Limits far above what this test sends, so that only money decides.
UNLIMITED = {
    "IMAGEGATE_IMAGES_PER_MINUTE": "10000",
    "IMAGEGATE_ACCOUNT_IMAGES_PER_MINUTE": "10000",
    "IMAGEGATE_MAX_CONCURRENT": "100",
    "IMAGEGATE_ACCOUNT_MAX_CONCURRENT": "100",
}


def admin(state_dir: Path, command: str) -> subprocess.CompletedProcess:
    """The admin CLI as docs/money.md runs it against `make serve`: after `. .imagegate/aws-env`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IMAGEGATE_"))}
    cli = Path(sys.executable).parent / "imagegate"
    return subprocess.run(
        ["bash", "-c", f". {state_dir / 'aws-env'} && {cli} {command}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def counted(http: httpx.Client, url: str, headers: dict[str, str], images: int) -> dict:
    """The balance once its usage counts `images`: the dev server counts usage from the table's stream every
    half second (local/streams.py), as the usage function does on AWS; what it still shows after
    USAGE_WAIT_S is what the test sees."""
    deadline = time.monotonic() + USAGE_WAIT_S
    while True:
        balance = http.get(url, headers=headers).json()
        shown = sum(row["images"] for row in balance["usage"]["data"])
        if shown >= images or time.monotonic() > deadline:
            return balance
        time.sleep(0.1)


def test_concurrent_requests_on_a_small_balance_never_overdraw_through_make_serve(tmp_path):
    balance_usd = f"{AFFORDABLE * DALLE2_256 / 1_000_000:.6f}"
    proc, lines = start(tmp_path, IMAGEGATE_DEV_BALANCE=balance_usd, **UNLIMITED)
    try:
        picked = next(line for line in lines if line.startswith("dynamodb:"))
        assert picked.startswith("dynamodb: dynoxide ") == (dynoxide_binary(os.environ) is not None), picked
        key, base_url = banner_fields(lines)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=REQUESTS)) as http:

            def generate(_: int) -> int:
                return http.post(f"{base_url}/images/generations", json=BODY, headers=headers).status_code

            with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
                statuses = sorted(pool.map(generate, range(REQUESTS)))
            balance = counted(http, f"{base_url}/balance", headers, AFFORDABLE)

        assert statuses == [200] * AFFORDABLE + [402] * (REQUESTS - AFFORDABLE)
        assert balance["balance_micros"] == 0
        [usage] = balance["usage"]["data"]
        assert (usage["images"], usage["charged_micros"]) == (AFFORDABLE, AFFORDABLE * DALLE2_256)

        reconciled = admin(tmp_path, f"reconcile {balance['account_id']}")
        assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
        assert "  ok  balance $0.000000  ledger $0.000000  in flight 0 " in reconciled.stdout
        # The sweep reads the sparse index of open reservations: none is left open.
        swept = admin(tmp_path, "sweep --older-than 330")
        assert swept.returncode == 0, swept.stdout + swept.stderr
        assert "REQUEST_ID" not in swept.stdout
    finally:
        stop(proc)
