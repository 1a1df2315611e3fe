"""How long a request full of decompression bombs takes to be refused (issue 8, item 7): a report.

Seventeen small PNGs that each decode to 4096x4096, posted to /v1/images/edits over the in-process app
(moto for AWS): for dall-e-2 (takes one file), for gpt-image-1.5 (up to 16 files) with a funded key, and
for gpt-image-1.5 with a $0 key (turned away for its balance). Prints the median wall time of each refusal.

    .venv/bin/python bench/bombs.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _inprocess import in_process, png


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bomb = png(4096, 4096)
    print(f"one bomb: {len(bomb)} bytes of PNG, 4096x4096 RGBA when decoded")
    cases = [
        ("dall-e-2, 17 files", "funded", "dall-e-2", 17),
        ("gpt-image-1.5, 17 files", "funded", "gpt-image-1.5", 17),
        ("gpt-image-1.5, 16 files", "funded", "gpt-image-1.5", 16),
        ("gpt-image-1.5, 16 files, $0 key", "broke", "gpt-image-1.5", 16),
        ("gpt-image-1.5, 4 files, $0 key", "broke", "gpt-image-1.5", 4),
    ]
    with in_process({"funded": 10_000_000, "broke": 0}) as app:
        for label, key, model, count in cases:
            files = [("image[]", (f"b{i}.png", bomb, "image/png")) for i in range(count)]
            data = {"model": model, "prompt": "x", "quality": "low"}
            times, answer = [], None
            for _ in range(args.rounds):
                started = time.perf_counter()
                response = app.client.post("/v1/images/edits", headers=app.auth(key), data=data, files=files)
                times.append(time.perf_counter() - started)
                error = response.json().get("error") or {}
                answer = f"{response.status_code} {error.get('code')} ({error.get('param')})"
            print(f"{label:36} median {statistics.median(times) * 1000:8.1f} ms   {answer}")


if __name__ == "__main__":
    main()
