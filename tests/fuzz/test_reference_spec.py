"""Fuzz the three image paths of the reference spec (the contract we promise) against the app, in process.

schemathesis generates requests from `../shared/reference/openai-images.openapi.yaml` (beside the repo, as
CI lays it out): bodies that follow each operation's schema and bodies that break it, JSON for
/images/generations and multipart for /images/edits and /images/variations. They go to the ASGI app with a
funded key, AWS emulated by moto, images made by the built-in local provider. Every answer must be below
500, and every error must be OpenAI's body: `{"error": {"message", "type", "param", "code"}}`.

The budget is fixed (EXAMPLES per path) and the generation derandomized under a fixed hash seed, so every
run sends the same requests: the test cannot flake, and it finishes in well under a minute on two cores.
"""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import schemathesis
import yaml
from aws_lambda_powertools.logging import Logger
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from PIL import Image
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.formats import unregister_string_format

from imagegate.aws import AWSClients
from imagegate.config import Settings
from imagegate.http.api import create_app
from imagegate.local.devserver import provision
from imagegate.money.accounts import Accounts
from imagegate.service import Service

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT.parent / "shared" / "reference" / "openai-images.openapi.yaml"
PATHS = ("/images/generations", "/images/edits", "/images/variations")
# Requests per path: generated to fit the spec (most still break a model's contract), and to break it.
EXAMPLES = {GenerationMode.POSITIVE: 80, GenerationMode.NEGATIVE: 40}
FUNDS = 1_000_000_000  # $1,000: no request is refused for want of money, so valid ones reach the provider
ERROR_FIELDS = {"message", "type", "param", "code"}

pytestmark = pytest.mark.skipif(
    not SPEC.is_file(), reason=f"reference spec not found at {SPEC} (../shared is not beside the repo)"
)


@pytest.fixture(scope="module")
def app_and_key():
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
            mp.delenv(name, raising=False)
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            mp.setenv(name, value)
        with mock_aws():
            config = Settings(table="fuzz", bucket="fuzz", region="us-east-1")
            aws = AWSClients(config)
            provision(aws, config)
            service = Service(config, aws, Logger(service="imagegate-fuzz", level="CRITICAL"))
            accounts = Accounts(aws.dynamodb, config.table)
            account_id = accounts.create_account(FUNDS, label="fuzz")
            # Limits high enough that the fuzzer's requests are judged on their content, not their pace.
            key = accounts.create_key(account_id, label="fuzz", images_per_minute=100_000, max_concurrent=100)
            yield create_app(service), key


def image(size: tuple[int, int], mode: str = "RGBA", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img = Image.new(mode, size, (20, 120, 200, 255)[: len(mode)])
    if mode == "RGBA":
        img.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))  # a transparent half: the area to edit
    img.save(buf, fmt)
    return buf.getvalue()


# The spec's `format: binary` parts (image, image[], mask): small real images, so that requests get past
# decoding to the contract's rules and the provider, as well as schemathesis' own samples and random bytes.
UPLOADS = st.one_of(
    st.sampled_from(
        [
            image((64, 64)),
            image((256, 256)),
            image((64, 64), "RGB"),
            image((96, 64)),
            image((64, 64), "RGB", "JPEG"),
            image((64, 64), "RGBA", "WEBP"),
            image((64, 64), "L", "GIF"),
        ]
    ),
    st.binary(max_size=256),
)


@pytest.fixture(scope="module", autouse=True)
def real_images_for_binary_parts():
    schemathesis.openapi.format("binary", UPLOADS)
    yield
    unregister_string_format("binary")


def spec():
    """The reference spec, with one change to how an edit's `image` goes on the wire.

    schemathesis sends a multipart property as a file only when its own schema says `format: binary`; the
    spec's edit `image` is `anyOf: [binary, array of binary]`, which it would send as text fields, and
    every edit would stop at "expected a file". It is given as the array of files it means (one file is an
    array of one on the wire, as the SDK sends it); nothing else is changed.
    """
    document = yaml.safe_load(SPEC.read_text())
    image = document["components"]["schemas"]["CreateImageEditRequest"]["properties"]["image"]
    [array] = [branch for branch in image.pop("anyOf") if branch.get("type") == "array"]
    image.update(array)
    schema = schemathesis.openapi.from_dict(document)
    # The spec's servers say https://api.openai.com/v1; requests go to the app's /v1 in process.
    schema.config.update(base_url="http://localhost/v1")
    return schema


def openai_error_problem(response) -> str | None:
    """Why an error response is not OpenAI's error body, or None when it is."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return f"not JSON: {response.content[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(body) != {"error"} or set(error) != ERROR_FIELDS:
        return f"not {{'error': {sorted(ERROR_FIELDS)}}}: {body!r:.300}"
    if not (isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)):
        return f"message and type must be non-empty strings: {error!r:.300}"
    if not all(error[f] is None or isinstance(error[f], str) for f in ("param", "code")):
        return f"param and code must be strings or null: {error!r:.300}"
    return None


class Tally:
    def __init__(self):
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.failures: list[str] = []


def fuzz(operation, app, key, tally: Tally, mode: GenerationMode) -> None:
    """Send EXAMPLES[mode] requests generated for `operation` (fitting the spec, or breaking it); tally."""

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode))
    def send(case):
        response = case.call(app=app, headers={"Authorization": f"Bearer {key}"})
        tally.sent += 1
        tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
        problem = None
        if response.status_code >= 500:
            problem = f"{response.status_code}: {response.content[:300]!r}"
        elif response.status_code >= 400:
            problem = openai_error_problem(response)
        if problem:
            tally.failures.append(f"{case.path}: {problem}\n    reproduce: {case.as_curl_command()[:1500]}")

    send()


def test_the_reference_specs_image_paths_never_answer_5xx_and_always_answer_openai_errors(request):
    if os.environ.get("PYTHONHASHSEED") != "0":
        # schemathesis iterates sets of strings as it generates, and string hashes are salted per process:
        # the same Hypothesis seed would send other requests in another process. So the test runs in a
        # child with a fixed hash seed, and every run, here or in CI, sends the same requests.
        child = subprocess.run(
            [sys.executable, "-m", "pytest", f"{__file__}::{request.node.name}", "-qs", "-pno:cacheprovider"],
            env={**os.environ, "PYTHONHASHSEED": "0"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        print(child.stdout[-3000:])
        assert child.returncode == 0, child.stdout[-8000:] + child.stderr[-2000:]
        return
    app, key = request.getfixturevalue("app_and_key")
    schema = spec()
    failures = []
    for path in PATHS:
        started = time.monotonic()
        tally = Tally()
        for mode in GenerationMode:
            fuzz(schema[path]["POST"], app, key, tally, mode)
        elapsed = time.monotonic() - started
        print(f"{path}: {tally.sent} requests in {elapsed:.1f} s, statuses {sorted(tally.statuses.items())}")
        assert tally.sent >= sum(EXAMPLES.values()) // 2, f"{path}: only {tally.sent} requests were generated"
        failures += tally.failures
        if path != "/images/edits":
            # Not only errors: the fuzzer's valid requests reach the provider and are served. (A random
            # edit rarely meets a contract: dall-e-2 wants a square PNG with alpha, one of three sizes and
            # no GPT parameters; the end-to-end suite serves edits.)
            assert tally.statuses.get(200, 0) > 0, f"{path}: {tally.statuses}"
    assert not failures, f"{len(failures)} bad answers; the first:\n" + "\n".join(failures[:3])
