"""Each Lambda function's memory peak, for sizing FunctionMemorySize and the worker's memory (issue 22,
item 5): a report, never a gate.

For every function in functions/, a fresh interpreter imports its handler (functions/<name>/app.py) and
serves that function's sample event from events/, and the process's RSS high-water mark (VmHWM) is read
after the invocation: imports, clients, the request and its images, as a Lambda execution environment
holds them on its first request. AWS is `make serve`'s emulation (moto for every service here: the
handlers take one endpoint), with the events' API key funded; the images come from the local provider
(no upstream is configured), which decodes inputs and renders outputs at the requested size.

Besides the committed samples, two 16-image edits (gpt-image-1.5, 1024x1024):
- payload-bound: sixteen noise PNGs filling the 6 MB a synchronous Lambda invocation accepts;
- pixel-bound: sixteen flat 2048x2048 PNGs (small files, 64 Mi pixels together: the most one request may
  make a renderer decode, imagegate.inputs.images.MAX_REQUEST_PIXELS);
- reference-bound: the JSON form naming sixteen uploaded files of ~4 MB each, the 64 MB of references one
  request may carry (imagegate.inputs.references.MAX_REFERENCES_BYTES).
Each edit is also sent with `Prefer: respond-async`, and the worker serves the job it queued (received from
the queue by this script), in a fresh process too.

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from local_stack import stack_aws_env, start_stack, stop_stack

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
EVENT_KEY = "sk-ig-events-0123456789abcdef0123456789abcdef"  # events/build_events.py's
TABLE = "imagegate-bench-memory"
BUCKET = "imagegate-bench-memory"
JOBS_QUEUE = "imagegate-bench-memory-jobs"  # ours, not the one the dev server's own worker drains
LAMBDA_PAYLOAD = 6 * 2**20
SAMPLES = {
    "generations": "generations.json",
    "edits": "edits.json",
    "variations": "variations.json",
    "uploads": "uploads.json",
    "balance": "balance.json",
    "jobs": "jobs.json",
    "sweep": "sweep.json",
    "webhooks": "webhook_delivery.json",
    "requests": "job_request_sqs.json",
    "invoke": "job_request_invoke.json",
}
SIZES = (256, 512, 1024, 1536, 2048)


def serve_once(function: str, event_path: str) -> None:
    """In the child: import the handler, invoke it once, print its outcome and the RSS peak."""

    class Context:
        function_name = f"imagegate-{function}"
        function_version = "$LATEST"
        memory_limit_in_mb = 1024
        invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:imagegate-{function}"
        aws_request_id = "00000000-0000-4000-8000-000000000000"

        def get_remaining_time_in_millis(self) -> int:
            return 30_000

    spec = importlib.util.spec_from_file_location("app", ROOT / "functions" / function / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    imported = _status("VmRSS")
    event = json.loads(Path(event_path).read_text())
    answer = module.handler(event, Context())
    outcome = (
        answer.get("statusCode", answer.get("batchItemFailures", "done"))
        if isinstance(answer, dict)
        else "done"
    )
    print(
        "@@MEMORY@@ " + json.dumps({"imported": imported, "peak": _status("VmHWM"), "outcome": str(outcome)})
    )


def _status(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M)[1]) / 1024


def edit_event(images: list[bytes]) -> dict[str, Any]:
    """events/edits.json with `images` as its image[] parts (the REST API hands Lambda the body base64)."""
    import httpx

    event = json.loads((EVENTS / "edits.json").read_text())
    data = {"model": "gpt-image-1.5", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"}
    files = [("image[]", (f"i{i}.png", image, "image/png")) for i, image in enumerate(images)]
    request = httpx.Request("POST", "http://x/", data=data, files=files)
    body = request.read()
    headers = {**event["headers"], "content-type": request.headers["content-type"]}
    headers["content-length"] = str(len(body))
    event["headers"] = headers
    event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    event["body"] = base64.b64encode(body).decode()
    return event


def sixteen_image_edits() -> dict[str, dict[str, Any]]:
    from _inprocess import png  # not in the children: it sets up an in-process AWS

    # base64 takes 4/3; leave room for the rest of the event
    side = int(math.sqrt(LAMBDA_PAYLOAD * 3 / 4 * 0.95 / 16 / 4))
    payload = edit_event([png(side, side, noise=True)] * 16)
    assert len(json.dumps(payload)) <= LAMBDA_PAYLOAD
    pixels = edit_event([png(2048, 2048)] * 16)
    return {
        f"edits: 16 images, payload-bound ({side}x{side} noise)": payload,
        "edits: 16 images, pixel-bound (2048x2048 flat)": pixels,
    }


def reference_edit(s3: Any, dynamodb: Any) -> dict[str, Any]:
    """events/edits_json.json naming 16 uploaded files of ~4 MB of noise each: the 64 MB of references one
    request may carry (imagegate.inputs.references.MAX_REFERENCES_BYTES), stored where uploads put them."""
    import hashlib
    import uuid

    from _inprocess import png

    key = {"pk": {"S": f"KEY#{hashlib.sha256(EVENT_KEY.encode()).hexdigest()}"}, "sk": {"S": "KEY"}}
    account_id = dynamodb.get_item(TableName=TABLE, Key=key, ConsistentRead=True)["Item"]["account_id"]["S"]
    image = png(1000, 1000, noise=True)
    file_ids = [f"file-{uuid.uuid4().hex}" for _ in range(16)]
    for file_id in file_ids:
        s3.put_object(
            Bucket=BUCKET, Key=f"uploads/{account_id}/{file_id}", Body=image, ContentType="image/png"
        )
    event = json.loads((EVENTS / "edits_json.json").read_text())
    body = json.dumps(
        {
            "model": "gpt-image-1.5",
            "prompt": "a lighthouse",
            "images": [{"file_id": f} for f in file_ids],
            "size": "1024x1024",
            "quality": "low",
        }
    )
    event["body"] = body
    event["headers"]["content-length"] = str(len(body))
    event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    return event


def measure(function: str, event: dict[str, Any], env: dict[str, str], workdir: Path) -> dict[str, Any]:
    path = workdir / "event.json"
    path.write_text(json.dumps(event))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", function, str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@MEMORY@@ "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"{function} failed: {proc.stderr[-800:]}")


def worker_event(sqs: Any, queue_url: str) -> dict[str, Any]:
    """The job the jobs function just queued, as the SQS event Lambda hands the worker."""
    from imagegate.local.devserver import _sqs_record

    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, AttributeNames=["All"])
    return {"Records": [_sqs_record(m, queue_url) for m in messages.get("Messages", [])]}


def job_status(dynamodb: Any, message: dict[str, str]) -> str:
    """The job's status once the worker is done with it (jobs/lifecycle.py's item)."""
    from imagegate.table import read_job

    item = read_job(dynamodb, TABLE, message["account_id"], message["job_id"]) or {}
    return "job " + item.get("status", {}).get("S", "not found")


def lambda_sizes(peak_mb: float) -> list[str]:
    """What a second of waiting costs at each size (arm64), and whether the peak fits with headroom."""
    from capacity import lambda_second_cost

    return [
        f"{mb:>5} MB: ${lambda_second_cost(mb) * 1e6:6.2f} per million requests per second waited,"
        f" {mb / 1769:.2f} vCPU, {'fits' if peak_mb * 1.5 <= mb else 'too small'} for {peak_mb:.0f} MB x1.5"
        for mb in SIZES
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", nargs=2, metavar=("FUNCTION", "EVENT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return serve_once(*args.child)

    import botocore.session

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        extra = {
            "IMAGEGATE_DYNAMODB": "moto",
            "IMAGEGATE_DEV_KEY": EVENT_KEY,
            "IMAGEGATE_TABLE": TABLE,
            "IMAGEGATE_BUCKET": BUCKET,
        }
        proc, _, _, _ = start_stack(str(workdir / "stack"), **extra)
        try:
            endpoint = stack_aws_env(str(workdir / "stack"))["AWS_ENDPOINT_URL"]
            session = botocore.session.get_session()
            sqs, s3, dynamodb = (
                session.create_client(
                    service,
                    region_name="us-east-1",
                    endpoint_url=endpoint,
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                )
                for service in ("sqs", "s3", "dynamodb")
            )
            queue_url = sqs.create_queue(QueueName=JOBS_QUEUE)["QueueUrl"]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IMAGEGATE_"))}
            env |= {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1",
                "IMAGEGATE_TABLE": TABLE,
                "IMAGEGATE_BUCKET": BUCKET,
                "IMAGEGATE_JOBS_QUEUE_URL": queue_url,
                "IMAGEGATE_METRICS": "on",
                "POWERTOOLS_LOG_LEVEL": "INFO",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
            }
            runs = [
                (function, sample, json.loads((EVENTS / sample).read_text()))
                for function, sample in SAMPLES.items()
            ]
            runs.append(("edits", "edits_async.json", json.loads((EVENTS / "edits_async.json").read_text())))
            runs.append(("worker", "the job edits_async.json queued", {}))
            edits = sixteen_image_edits()
            edits["edits: 16 files by id, 4 MB each (64 MB of references)"] = reference_edit(s3, dynamodb)
            for name, event in edits.items():
                runs.append(("edits", name, event))
                queued = {**event, "headers": {**event["headers"], "prefer": "respond-async"}}
                queued["multiValueHeaders"] = {k: [v] for k, v in queued["headers"].items()}
                runs.append(("edits", name.replace("edits:", "async:"), queued))
                runs.append(("worker", name.replace("edits:", "job:"), {}))
            print(
                f"{'function':<12} {'event':<52} {'after import':>13} {'peak (VmHWM)':>13}  outcome",
                flush=True,
            )
            peaks: dict[str, float] = {}
            for function, label, event in runs:
                if function == "worker":
                    event = worker_event(sqs, queue_url)
                figures = measure(function, event, env, workdir)
                for record in event.get("Records", []) if function == "worker" else []:
                    # as Lambda's event source mapping does after a success: else it comes back
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=record["receiptHandle"])
                    figures["outcome"] = job_status(dynamodb, json.loads(record["body"]))
                peaks[function] = max(peaks.get(function, 0), figures["peak"])
                print(
                    f"{function:<12} {label:<52} {figures['imported']:>10.0f} MB {figures['peak']:>10.0f} MB"
                    f"  {figures['outcome']}",
                    flush=True,
                )
        finally:
            stop_stack(proc)
    synchronous = max(peaks[f] for f in ("generations", "edits", "variations"))
    print(
        f"\nlargest synchronous image function peak: {synchronous:.0f} MB; worker: {peaks['worker']:.0f} MB"
    )
    print("what a second of upstream time costs (Lambda arm64), and whether the synchronous peak fits:")
    for line in lambda_sizes(synchronous):
        print(f"  {line}")


if __name__ == "__main__":
    main()
