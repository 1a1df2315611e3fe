"""The catalog stays out of a warm request's path (issue 18).

Two in-process apps (moto), one with the packaged catalog and one whose catalog override comes from S3
(`s3://…`, re-read every `catalog_ttl_seconds`): each serves warm requests, one app after the other, while
the catalog's loader and the override fetch are counted. It prints the cold cost of a load (the packaged
document, and with a parsed override), the warm cost of reading the catalog in force, the loads and fetches
during the warm requests (0 is the target), and the warm request's CPU with an S3 override against without.

    .venv/bin/python bench/catalog.py [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _inprocess import in_process

OVERRIDE = {
    "aliases": {"imagen-3": "gemini-3.1-flash-image"},
    "models": {"gpt-image-2.6-flare": {"like": "gpt-image-2.5-flare", "routes": [{"provider": "local"}]}},
}
BODY = {"model": "gpt-image-2", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"}


def cold_costs() -> tuple[float, float]:
    """Milliseconds to load the packaged catalog, and the packaged one with the override, uncached."""
    from imagegate.catalog import loader
    from imagegate.config import Settings

    def once(settings: Settings) -> float:
        loader._load.cache_clear()
        started = time.perf_counter()
        loader.load_catalog(settings)
        return (time.perf_counter() - started) * 1000

    packaged = statistics.median(once(Settings()) for _ in range(20))
    override = statistics.median(once(Settings(catalog=json.dumps(OVERRIDE))) for _ in range(20))
    return packaged, override


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)

    from imagegate.catalog import loader, sources

    packaged_ms, override_ms = cold_costs()
    counts = {"loads": 0, "fetches": 0}
    build, fetch = loader._build, sources.fetch_override

    def counted_build(*a: object, **k: object) -> object:
        counts["loads"] += 1
        return build(*a, **k)

    def counted_fetch(aws: object, source: str) -> str:
        counts["fetches"] += 1
        return fetch(aws, source)

    loader._build = counted_build  # type: ignore[assignment]
    sources.fetch_override = counted_fetch  # type: ignore[assignment]
    cpu: dict[str, list[float]] = {}
    warm_loads = warm_fetches = 0
    # One app at a time: moto's backends are per process, and a second mock would reset the first's.
    for name, settings in (("packaged", {}), ("s3 override", {"catalog": "s3://bench-catalog/catalog.json"})):
        # Rate limits far above the run: the bench measures the catalog, not the limiter's refusals.
        limits = {"images_per_minute": 10**6, "account_images_per_minute": 10**6}
        with in_process({"a": 10**9}, **limits, **settings) as app:
            import boto3

            s3 = boto3.client("s3", region_name="us-east-1")
            s3.create_bucket(Bucket="bench-catalog")
            s3.put_object(Bucket="bench-catalog", Key="catalog.json", Body=json.dumps(OVERRIDE).encode())
            # Warm: the first request loads the catalog (and fetches the override).
            assert (
                app.client.post("/v1/images/generations", json=BODY, headers=app.auth("a")).status_code == 200
            )
            before = dict(counts)
            cpu[name] = []
            for _ in range(args.requests):
                started = time.process_time()
                response = app.client.post("/v1/images/generations", json=BODY, headers=app.auth("a"))
                cpu[name].append((time.process_time() - started) * 1000)
                assert response.status_code == 200, response.text
            warm_loads += counts["loads"] - before["loads"]
            warm_fetches += counts["fetches"] - before["fetches"]
    from imagegate.catalog.sources import CatalogSource
    from imagegate.config import Settings

    current = CatalogSource(
        Settings(catalog="s3://x/y"), lambda s: json.dumps(OVERRIDE), _Quiet(), lambda: None
    )
    current.current()
    started = time.perf_counter()
    for _ in range(100_000):
        current.current()
    warm_us = (time.perf_counter() - started) / 100_000 * 1e6

    plain_ms, remote_ms = statistics.median(cpu["packaged"]), statistics.median(cpu["s3 override"])
    ratio = remote_ms / plain_ms
    print(f"catalog load, cold: packaged {packaged_ms:.2f} ms; with an override parsed {override_ms:.2f} ms")
    print(f"catalog in force, warm: {warm_us:.3f} us a read (a clock read and a comparison)")
    print(f"warm requests: {args.requests} each; catalog loads {warm_loads}, override fetches {warm_fetches}")
    print(
        f"warm request CPU (median): packaged {plain_ms:.2f} ms, S3 override {remote_ms:.2f} ms, {ratio:.2f}x"
    )
    met = warm_loads == 0 and warm_fetches == 0 and ratio < 1.10
    verdict = "MET" if met else "NOT MET"
    print(
        f"TARGET catalog out of the warm path: {verdict} "
        f"({warm_loads} loads, {warm_fetches} fetches in {2 * args.requests} warm requests; CPU {ratio:.2f}x)"
    )
    return 0 if met else 1


class _Quiet:
    def error(self, *args: object, **kwargs: object) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
