"""A small sampling profiler for the gateway bench: which code the request threads are in, by package.

cProfile sees one thread and inflates deep recursion (botocore's validator and serialiser) several-fold;
this samples every thread's stack each millisecond (`sys._current_frames`) and counts, per sample, the
innermost frame's package (self time) and every package on the stack (inclusive time).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path

# Most specific first: a frame's bucket is the first whose marker is in its file path.
BUCKETS = (
    ("imagegate/money/billing.py", "imagegate.money.billing"),
    ("imagegate/money/ratelimit.py", "imagegate.money.ratelimit"),
    ("imagegate/money/accounts.py", "imagegate.money.accounts"),
    ("imagegate/providers/routing.py", "imagegate.providers.routing"),
    ("imagegate/providers", "imagegate.providers"),
    ("imagegate/catalog/prices.py", "imagegate.catalog.prices"),
    ("imagegate/inputs/validation.py", "imagegate.inputs.validation"),
    ("imagegate/metrics.py", "imagegate.metrics"),
    ("imagegate/service.py", "imagegate.service"),
    ("imagegate/http/api.py", "imagegate.http.api"),
    ("imagegate/", "imagegate (other)"),
    ("botocore/auth.py", "botocore signing"),
    ("botocore/signers.py", "botocore signing"),
    ("botocore/regions.py", "botocore endpoint rules"),
    ("botocore/endpoint_provider.py", "botocore endpoint rules"),
    ("botocore/serialize.py", "botocore serialise"),
    ("botocore/parsers.py", "botocore parse"),
    ("botocore/validate.py", "botocore validate"),
    ("botocore/", "botocore (other)"),
    ("boto3/", "boto3"),
    ("aws_lambda_powertools/metrics", "powertools metrics"),
    ("aws_lambda_powertools/", "powertools logger"),
    ("tenacity/", "tenacity"),
    ("httpx/", "httpx"),
    ("httpcore/", "httpx"),
    ("pydantic", "pydantic"),
    ("fastapi/", "fastapi"),
    ("starlette/", "starlette"),
    ("anyio/", "anyio"),
    ("mangum/", "mangum"),
    ("/logging/", "stdlib logging"),
    ("/json/", "stdlib json"),
    ("/asyncio/", "asyncio"),
    ("bench/", "bench harness"),
)


def bucket(filename: str) -> str:
    for marker, name in BUCKETS:
        if marker in filename:
            return name
    return "stdlib/other"


class Sampler:
    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.self_counts: Counter[str] = Counter()
        self.inclusive: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        # A short switch interval lets the sampler take the GIL anywhere, not only where a thread blocks
        # (else samples pile up on I/O such as log writes).
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0001)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        sys.setswitchinterval(self._switch)

    def _run(self) -> None:
        sampler = threading.get_ident()
        while not self._stop.is_set():
            for ident, frame in sys._current_frames().items():
                if ident == sampler:
                    continue
                top = frame
                # A thread blocked in a wait (an idle worker, the loop's select) is not working.
                if top.f_code.co_name in ("wait", "select", "_wait_for_tstate_lock", "get", "poll"):
                    continue
                seen = set()
                first = None
                while frame is not None:
                    name = bucket(frame.f_code.co_filename)
                    if first is None and name != "stdlib/other":
                        first = name
                    seen.add(name)
                    frame = frame.f_back
                self.self_counts[first or "stdlib/other"] += 1
                self.inclusive.update(seen)
                self.samples += 1
            time.sleep(self.interval)

    def report(self, top: int = 22) -> str:
        total = max(self.samples, 1)
        lines = [f"{self.samples} samples; self = innermost known package, incl = anywhere on the stack"]
        lines.append(f"  {'self %':>7} {'incl %':>7}  package")
        names = sorted(self.inclusive, key=lambda n: -self.self_counts.get(n, 0))
        for name in names[:top]:
            if name in ("bench harness",):
                continue
            own = 100 * self.self_counts.get(name, 0) / total
            lines.append(f"  {own:>6.1f}% {100 * self.inclusive[name] / total:>6.1f}%  {name}")
        return "\n".join(lines)


__all__ = ["Path", "Sampler"]
