"""The Bedrock provider against a real bedrock-runtime client whose calls botocore's Stubber answers."""

import base64
import io
import json

import boto3
import pytest
from botocore.exceptions import (
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.response import StreamingBody
from botocore.stub import Stubber
from PIL import Image, ImageChops

from imagegate.errors import ProviderError
from imagegate.inputs.images import inspect
from imagegate.providers import Deps, Upstream, bedrock, run
from tests.unit.conftest import half_mask, image_bytes, upload

NOVA = "amazon.nova-canvas-v1:0"
TITAN = "amazon.titan-image-generator-v2:0"
CORE = "stability.stable-image-core-v1:1"


class FakeAWS:
    """Stands in for AWSClients: hands out one client and records what it was asked for."""

    def __init__(self, client):
        self._client = client
        self.asked = []

    def client(self, service, region=None, *, read_timeout=None, max_attempts=3):
        self.asked.append((service, region, read_timeout, max_attempts))
        return self._client


class Body:
    """Matches any JSON `body` parameter and keeps it, so tests can assert the exact request."""

    def __init__(self, sent):
        self.sent = sent

    def __eq__(self, other):
        self.sent.append(json.loads(other))
        return True


@pytest.fixture
def client():
    return boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )


@pytest.fixture
def stub(client):
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def sequential(monkeypatch):
    # One call at a time, so the Stubber's queued answers meet the calls in a known order.
    monkeypatch.setattr(bedrock, "PARALLEL_CALLS", 1)


@pytest.fixture
def aws(client):
    return FakeAWS(client)


@pytest.fixture
def sent():
    return []


def make(aws, model=NOVA, region="eu-west-1", timeout_s=17.0, **options):
    return bedrock.create(
        Upstream("bedrock", model, region=region, timeout_s=timeout_s, options=options), Deps(aws)
    )


def png(width, height, colour=(10, 120, 200)):
    return image_bytes(width, height, mode="RGB", colour=colour)


def answer(stub, sent, payload, model=NOVA):
    data = json.dumps(payload).encode()
    stub.add_response(
        "invoke_model",
        {"body": StreamingBody(io.BytesIO(data), len(data)), "contentType": "application/json"},
        {
            "modelId": model,
            "body": Body(sent),
            "contentType": "application/json",
            "accept": "application/json",
        },
    )


def images_of(*sizes):
    return {"images": [base64.b64encode(png(w, h)).decode() for w, h in sizes]}


def decoded(b64):
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def assert_images(result, count, size, fmt):
    assert len(result.images) == count
    for data in result.images:
        with Image.open(io.BytesIO(data)) as img:
            assert (img.size, img.format) == (size, fmt)


def test_generation_sends_text_image_and_fits_the_output(aws, stub, sent, job):
    provider = make(aws)
    assert aws.asked == []  # no client until the first call
    answer(stub, sent, images_of((1024, 1024)))

    result = run(provider, job(prompt="a red fox", model="dall-e-2", size="1024x1024"))

    assert sent == [
        {
            "taskType": "TEXT_IMAGE",
            "textToImageParams": {"text": "a red fox"},
            "imageGenerationConfig": {
                "numberOfImages": 1,
                "width": 1024,
                "height": 1024,
                "quality": "standard",
            },
        }
    ]
    assert aws.asked == [("bedrock-runtime", "eu-west-1", 17.0, 1)]
    assert_images(result, 1, (1024, 1024), "PNG")
    assert result.revised_prompt is None and result.usage is None


def test_empty_route_region_leaves_the_client_default(aws, stub, sent, job):
    answer(stub, sent, images_of((512, 512)))
    make(aws, region="").generate(job(prompt="x", model="dall-e-2", size="512x512"))
    assert aws.asked == [("bedrock-runtime", None, 17.0, 1)]


def test_seven_images_take_a_batch_of_five_then_two(aws, stub, sent, job, sequential):
    answer(stub, sent, images_of(*[(512, 512)] * 5))
    answer(stub, sent, images_of(*[(512, 512)] * 2))

    result = make(aws).generate(job(prompt="boats", model="dall-e-2", size="512x512", n=7))

    assert [body["imageGenerationConfig"]["numberOfImages"] for body in sent] == [5, 2]
    assert all(body["textToImageParams"] == {"text": "boats"} for body in sent)
    assert_images(result, 7, (512, 512), "PNG")


def test_batches_run_side_by_side(aws, stub, sent, job):
    for _ in range(2):
        answer(stub, sent, images_of(*[(256, 256)] * 5))
    result = make(aws).generate(job(prompt="boats", model="dall-e-2", size="256x256", n=10))
    assert [body["imageGenerationConfig"]["numberOfImages"] for body in sent] == [5, 5]
    assert_images(result, 10, (256, 256), "PNG")


@pytest.mark.parametrize(
    ("model", "quality", "expected"),
    [
        ("dall-e-3", "hd", "premium"),
        ("dall-e-3", "standard", "standard"),
        ("gpt-image-1.5", "high", "premium"),
        ("gpt-image-1.5", "medium", "standard"),
        ("gpt-image-1.5", "low", "standard"),
    ],
)
def test_quality_maps_to_standard_or_premium(aws, stub, sent, job, model, quality, expected):
    answer(stub, sent, images_of((1024, 1024)))
    make(aws).generate(job(prompt="x", model=model, size="1024x1024", quality=quality))
    assert sent[0]["imageGenerationConfig"]["quality"] == expected


@pytest.mark.parametrize(
    ("model", "size", "upstream_model", "generated"),
    [
        ("dall-e-2", "256x256", NOVA, (320, 320)),  # Nova's smallest side is 320
        ("dall-e-3", "1792x1024", NOVA, (1792, 1024)),
        ("gpt-image-2", "3840x2160", NOVA, (2720, 1536)),  # under 4,194,304 pixels, on the 16 grid
        ("gpt-image-2", "2048x2048", NOVA, (2032, 2048)),  # "less than 4,194,304": 2048x2048 is not
        ("dall-e-2", "256x256", TITAN, (512, 512)),  # the smallest square that covers it
        ("dall-e-3", "1792x1024", TITAN, (1152, 640)),  # 9:5 is nearest to 7:4
        ("gpt-image-1.5", "1024x1536", TITAN, (768, 1152)),
    ],
)
def test_generates_at_a_size_the_model_accepts_and_returns_the_job_size(
    aws, stub, sent, job, model, size, upstream_model, generated
):
    answer(stub, sent, images_of(generated), model=upstream_model)
    the_job = job(prompt="x", model=model, size=size, output_format="jpeg" if "gpt" in model else None)

    result = make(aws, upstream_model).generate(the_job)

    config = sent[0]["imageGenerationConfig"]
    assert (config["width"], config["height"]) == generated
    assert_images(result, 1, (the_job.width, the_job.height), the_job.output_format.upper())


def test_never_more_images_than_asked_for(aws, stub, sent, job):
    answer(stub, sent, images_of((1024, 1024), (1024, 1024)))
    assert len(make(aws).generate(job(prompt="x", model="dall-e-2")).images) == 1


def test_route_options_reach_the_request(aws, stub, sent, job):
    answer(stub, sent, images_of((1024, 1024)), model=TITAN)
    make(aws, TITAN, negative_text="blurry", cfg_scale=7).generate(job(prompt="x", model="dall-e-2"))
    assert sent[0]["textToImageParams"] == {"text": "x", "negativeText": "blurry"}
    assert sent[0]["imageGenerationConfig"]["cfgScale"] == 7.0


def test_edit_converts_the_openai_mask_pixel_exactly(aws, stub, sent, job):
    answer(stub, sent, images_of((512, 512)))
    the_job = job(
        "edits",
        images=[upload()],
        mask=half_mask(64, 64),
        prompt="add a moon",
        model="dall-e-2",
        size="512x512",
    )

    result = make(aws).edit(the_job)

    body = sent[0]
    assert body["taskType"] == "INPAINTING"
    assert body["imageGenerationConfig"] == {
        "numberOfImages": 1,
        "width": 512,
        "height": 512,
        "quality": "standard",
    }
    params = body["inPaintingParams"]
    assert params["text"] == "add a moon"
    with decoded(params["image"]) as image:
        assert (image.size, image.mode, image.format) == ((512, 512), "RGB", "PNG")
        assert image.getpixel((10, 10)) == (200, 40, 40)
    # Transparent right half of the OpenAI mask: black (change it); opaque left half: white (keep it).
    expected = Image.new("RGB", (512, 512), (255, 255, 255))
    expected.paste((0, 0, 0), (256, 0, 512, 512))
    with decoded(params["maskImage"]) as mask:
        assert mask.size == (512, 512)
        assert ImageChops.difference(mask.convert("RGB"), expected).getbbox() is None
    assert_images(result, 1, (512, 512), "PNG")


def test_edit_without_a_mask_uses_the_images_own_transparency(aws, stub, sent, job):
    transparent_right = inspect(half_mask(64, 64).data, "image")
    answer(stub, sent, images_of((1024, 1024)), model=TITAN)

    make(aws, TITAN).edit(job("edits", images=[transparent_right], prompt="sea", model="dall-e-2"))

    assert sent[0]["taskType"] == "INPAINTING"
    with decoded(sent[0]["inPaintingParams"]["maskImage"]) as mask:
        assert mask.size == (1024, 1024)
        assert mask.crop((0, 0, 512, 1024)).getextrema() == ((255, 255),) * 3
        assert mask.crop((512, 0, 1024, 1024)).getextrema() == ((0, 0),) * 3


def test_edit_with_nothing_transparent_reworks_the_whole_image(aws, stub, sent, job):
    """No editable pixel (a dall-e-2 opaque image, or a GPT edit without a mask, whose transparency is not
    an edit area): a prompted variation of the whole image."""
    answer(stub, sent, images_of((1024, 1024)))
    answer(stub, sent, images_of((1024, 1536)))

    make(aws).edit(job("edits", images=[upload()], prompt="make it blue", model="dall-e-2"))
    gpt_job = job(
        "edits",
        images=[inspect(half_mask(64, 64).data, "image[]"), upload("image[]", fmt="JPEG", mode="RGB")],
        prompt="combine",
        model="gpt-image-1.5",
        size="1024x1536",
    )
    make(aws).edit(gpt_job)

    for body, size, count in ((sent[0], (1024, 1024), 1), (sent[1], (1024, 1536), 2)):
        assert body["taskType"] == "IMAGE_VARIATION"
        params = body["imageVariationParams"]
        assert params["similarityStrength"] == 0.7
        assert len(params["images"]) == count
        for b64 in params["images"]:
            with decoded(b64) as image:
                assert image.size == size
    assert sent[0]["imageVariationParams"]["text"] == "make it blue"
    assert sent[1]["imageVariationParams"]["text"] == "combine"


def test_variation_has_no_text_and_the_routes_similarity(aws, stub, sent, job):
    answer(stub, sent, images_of((512, 512), (512, 512)))
    result = make(aws, similarity_strength=0.9).vary(
        job("variations", images=[upload()], model="dall-e-2", size="512x512", n=2)
    )
    assert sent == [
        {
            "taskType": "IMAGE_VARIATION",
            "imageVariationParams": {
                "images": [sent[0]["imageVariationParams"]["images"][0]],
                "similarityStrength": 0.9,
            },
            "imageGenerationConfig": {
                "numberOfImages": 2,
                "width": 512,
                "height": 512,
                "quality": "standard",
            },
        }
    ]
    assert_images(result, 2, (512, 512), "PNG")


def test_nova_output_filter_blocks_all_or_some(aws, stub, sent, job, sequential):
    answer(
        stub,
        sent,
        {"images": [], "error": "All of the generated images have been blocked by our content filters."},
    )
    with pytest.raises(ProviderError) as blocked:
        make(aws).generate(job(prompt="x", model="dall-e-2"))
    assert (blocked.value.status, blocked.value.code, blocked.value.fallover) == (
        400,
        "content_policy_violation",
        False,
    )

    answer(
        stub,
        sent,
        {
            **images_of((1024, 1024)),
            "error": "Some of the generated images have been blocked by our content filters.",
        },
    )
    result = make(aws).generate(job(prompt="x", model="dall-e-2", n=3))
    assert len(result.images) == 1


@pytest.mark.parametrize(
    ("size", "output_format", "ratio", "requested", "native"),
    [
        ("1024x1024", "png", "1:1", "png", (1024, 1024)),
        ("1536x1024", "webp", "3:2", "png", (1216, 832)),
        ("1024x1536", "jpeg", "2:3", "jpeg", (832, 1216)),
    ],
)
def test_stability_picks_the_nearest_aspect_ratio(
    aws, stub, sent, job, size, output_format, ratio, requested, native
):
    for _ in range(2):
        answer(stub, sent, {"seeds": [1], "finish_reasons": [None], **images_of(native)}, model=CORE)

    result = make(aws, CORE, negative_text="text").generate(
        job(prompt="a lighthouse", model="gpt-image-1.5", size=size, output_format=output_format, n=2)
    )

    expected = {
        "prompt": "a lighthouse",
        "aspect_ratio": ratio,
        "output_format": requested,
        "negative_prompt": "text",
    }
    assert sent == [expected, expected]
    width, height = map(int, size.split("x"))
    assert_images(result, 2, (width, height), output_format.upper())


def test_stability_sixteen_nine_for_wide_dall_e_3(aws, stub, sent, job):
    answer(stub, sent, {"seeds": [1], "finish_reasons": [None], **images_of((1344, 768))}, model="us." + CORE)
    make(aws, "us." + CORE).generate(job(prompt="x", model="dall-e-3", size="1792x1024"))
    assert sent == [{"prompt": "x", "aspect_ratio": "16:9", "output_format": "png"}]


def test_stability_filtered_finish_reason_is_a_content_policy_error(aws, stub, sent, job):
    answer(stub, sent, {"seeds": [1], "finish_reasons": ["Filter reason: prompt"], "images": []}, model=CORE)
    with pytest.raises(ProviderError) as caught:
        make(aws, CORE).generate(job(prompt="x", model="dall-e-3"))
    assert (caught.value.status, caught.value.code, caught.value.param) == (
        400,
        "content_policy_violation",
        "prompt",
    )
    assert not caught.value.retry and not caught.value.fallover


def test_stability_inference_error_is_worth_a_retry(aws, stub, sent, job):
    # Not a success even with something in `images`: only a null finish reason is.
    answer(
        stub, sent, {"seeds": [1], "finish_reasons": ["Inference error"], **images_of((64, 64))}, model=CORE
    )
    with pytest.raises(ProviderError) as caught:
        make(aws, CORE).generate(job(prompt="x", model="dall-e-3"))
    assert (caught.value.status, caught.value.retry) == (502, True)


def test_stability_partial_success_returns_the_images_made(aws, stub, sent, job, sequential):
    answer(stub, sent, {"seeds": [1], "finish_reasons": [None], **images_of((1024, 1024))}, model=CORE)
    stub.add_client_error("invoke_model", "ThrottlingException", "Too many requests", 429)
    answer(stub, sent, {"seeds": [2], "finish_reasons": [None], **images_of((1024, 1024))}, model=CORE)

    result = make(aws, CORE).generate(job(prompt="x", model="dall-e-2", n=3))

    assert_images(result, 2, (1024, 1024), "PNG")


def test_all_calls_failing_raises_the_first_error(aws, stub, job, sequential):
    stub.add_client_error("invoke_model", "ModelTimeoutException", "slow", 408)
    stub.add_client_error("invoke_model", "ThrottlingException", "busy", 429)
    with pytest.raises(ProviderError) as caught:
        make(aws, CORE).generate(job(prompt="x", model="dall-e-2", n=2))
    assert caught.value.code == "upstream_timeout"


def test_supports_by_model_family(aws):
    for model in (NOVA, TITAN):
        assert all(make(aws, model).supports(op) for op in ("generate", "edit", "vary"))
    stability = make(aws, "stability.sd3-5-large-v1:0")
    assert [stability.supports(op) for op in ("generate", "edit", "vary")] == [True, False, False]
    assert make(aws).name == "bedrock"


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("amazon.titan-image-generator-v1", {}),
        ("anthropic.claude-3-haiku", {}),
        (NOVA, {"negative_txt": "typo"}),
        (CORE, {"cfg_scale": 5}),
        (NOVA, {"cfg_scale": "high"}),
        (NOVA, {"negative_text": 3}),
    ],
)
def test_bad_routes_fail_at_create(aws, model, options):
    with pytest.raises(ValueError, match="Bedrock"):
        make(aws, model, **options)


BLOCKED = "This request has been blocked by our content filters. Please adjust your text prompt."
DENIED = "User: arn:aws:sts::123456789012:assumed-role/gate is not authorized to perform: bedrock:InvokeModel"
BAD_TOKEN = "The security token included in the request is invalid"


@pytest.mark.parametrize(
    ("code", "http", "message", "status", "error_code", "retry", "fallover"),
    [
        ("ValidationException", 400, BLOCKED, 400, "content_policy_violation", False, False),
        ("ValidationException", 400, "Image width 1000 is not supported", 502, "upstream_error", False, True),
        ("AccessDeniedException", 403, DENIED, 502, "upstream_error", False, True),
        ("ResourceNotFoundException", 404, "Model not found", 502, "upstream_error", False, True),
        ("UnrecognizedClientException", 403, BAD_TOKEN, 502, "upstream_error", False, True),
        ("ThrottlingException", 429, "Too many requests", 502, "upstream_rate_limited", True, True),
        ("ServiceQuotaExceededException", 400, "Quota exceeded", 502, "upstream_rate_limited", True, True),
        ("ModelTimeoutException", 408, "Model timed out", 504, "upstream_timeout", True, True),
        ("ServiceUnavailableException", 503, "Unavailable", 502, "upstream_error", True, True),
        ("ModelErrorException", 424, "Model error", 502, "upstream_error", True, True),
        ("InternalServerException", 500, "Internal", 502, "upstream_error", True, True),
        ("ModelNotReadyException", 429, "Not ready", 502, "upstream_error", True, True),
    ],
)  # fmt: skip
def test_client_errors_map_to_router_decisions(
    aws, stub, job, code, http, message, status, error_code, retry, fallover
):
    stub.add_client_error("invoke_model", code, message, http)
    with pytest.raises(ProviderError) as caught:
        make(aws).generate(job(prompt="x", model="dall-e-2"))
    error = caught.value
    assert (error.status, error.code, error.retry, error.fallover) == (status, error_code, retry, fallover)
    if code == "ValidationException" and status == 502:
        assert message in str(error)  # what the upstream disagreed with
    if code in ("AccessDeniedException", "ResourceNotFoundException", "UnrecognizedClientException"):
        assert message not in str(error) and "not your API key" in str(error)


@pytest.mark.parametrize(
    ("exc", "status", "code", "retry"),
    [
        (ReadTimeoutError(endpoint_url="https://bedrock"), 504, "upstream_timeout", True),
        (ConnectTimeoutError(endpoint_url="https://bedrock"), 504, "upstream_timeout", True),
        (EndpointConnectionError(endpoint_url="https://bedrock"), 502, "upstream_error", True),
        (NoCredentialsError(), 502, "upstream_error", False),
    ],
)
def test_transport_failures_map_to_router_decisions(aws, client, job, exc, status, code, retry):
    def fail(**kwargs):
        raise exc

    client.meta.events.register_first("before-call.bedrock-runtime.InvokeModel", fail)
    with pytest.raises(ProviderError) as caught:
        make(aws).generate(job(prompt="x", model="dall-e-2"))
    assert (caught.value.status, caught.value.code, caught.value.retry, caught.value.fallover) == (
        status,
        code,
        retry,
        True,
    )


def test_unreadable_answers_are_worth_a_retry(aws, stub, job, sequential):
    stub.add_response(
        "invoke_model", {"body": StreamingBody(io.BytesIO(b"<html>"), 6), "contentType": "text/html"}
    )
    answer(stub, [], {"images": ["not base64!"]})
    answer(stub, [], {"images": [base64.b64encode(b"not an image").decode()]})
    for _ in range(3):
        with pytest.raises(ProviderError) as caught:
            make(aws).generate(job(prompt="x", model="dall-e-2"))
        assert (caught.value.status, caught.value.retry) == (502, True)
