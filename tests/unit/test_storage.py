"""Output images in S3: encrypted, typed objects under the account's prefix, all-or-nothing, presigned."""

import time
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.exceptions import ClientError

from imagegate.storage import Storage

from .conftest import image_bytes


@pytest.fixture
def bucket(aws):
    # A bucket without default encryption, so SSE on the objects can only come from put_images.
    name = f"plain-{uuid.uuid4().hex[:12]}"
    aws.s3.create_bucket(Bucket=name)
    return name


def keys_in(s3, bucket):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.mark.parametrize(
    ("fmt", "content_type"), [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")]
)
def test_put_images_writes_typed_encrypted_objects(aws, bucket, fmt, content_type):
    storage = Storage(aws.s3, bucket)
    images = [image_bytes(16, 16, mode="RGB", fmt=fmt.upper(), colour=(i * 60, 0, 0, 255)) for i in range(3)]
    day = time.strftime("%Y-%m-%d", time.gmtime())
    keys = storage.put_images("acct_1", "req_abc", images, fmt)
    assert keys == [f"outputs/acct_1/{day}/req_abc/{i}.{fmt}" for i in range(3)]
    assert keys_in(aws.s3, bucket) == keys
    for key, data in zip(keys, images, strict=True):
        obj = aws.s3.get_object(Bucket=bucket, Key=key)
        assert obj["ContentType"] == content_type
        assert obj["ServerSideEncryption"] == "AES256"
        assert obj["Body"].read() == data


def test_prefix_is_configurable(aws, bucket):
    [key] = Storage(aws.s3, bucket, prefix="elsewhere").put_images("acct_2", "req_1", [b"x"], "png")
    assert key.startswith("elsewhere/acct_2/")


def test_presigned_url_lives_an_hour(aws, bucket):
    storage = Storage(aws.s3, bucket)
    [key] = storage.put_images("acct_1", "req_url", [image_bytes(8, 8)], "png")
    url = storage.presign(key)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert query["X-Amz-Expires"] == ["3600"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "X-Amz-Signature" in query
    assert parts.path.endswith(key)
    assert bucket in url


def test_presigned_url_uses_the_configured_ttl(aws, bucket):
    url = Storage(aws.s3, bucket, url_ttl_seconds=600).presign("outputs/a/b/c/0.png")
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["600"]


class FailsOnPut:
    """An S3 client whose n-th put_object fails, as S3 does under throttling or a lost connection."""

    def __init__(self, client, fail_on):
        self._client = client
        self._fail_on = fail_on
        self.puts = 0

    def put_object(self, **kwargs):
        self.puts += 1
        if self.puts == self._fail_on:
            raise ClientError(
                {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}, "PutObject"
            )
        return self._client.put_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_a_failed_write_deletes_the_images_already_written(aws, bucket):
    s3 = FailsOnPut(aws.s3, fail_on=2)
    storage = Storage(s3, bucket)
    with pytest.raises(ClientError, match="SlowDown"):
        storage.put_images("acct_1", "req_fail", [image_bytes(8, 8)] * 3, "png")
    assert s3.puts == 2
    assert keys_in(aws.s3, bucket) == []


def test_a_failed_write_leaves_other_requests_alone(aws, bucket):
    [kept] = Storage(aws.s3, bucket).put_images("acct_1", "req_ok", [b"kept"], "png")
    with pytest.raises(ClientError):
        Storage(FailsOnPut(aws.s3, fail_on=3), bucket).put_images(
            "acct_1", "req_fail", [b"a", b"b", b"c"], "png"
        )
    assert keys_in(aws.s3, bucket) == [kept]


@pytest.mark.parametrize("region", ["af-south-1", "ap-east-1", "il-central-1", "eu-west-1", "us-east-1"])
def test_presigned_urls_use_the_regional_virtual_hosted_endpoint(monkeypatch, region):
    """The legacy global host (<bucket>.s3.amazonaws.com) fails in opt-in regions: sign regional URLs."""
    from imagegate.aws import AWSClients
    from imagegate.config import Settings

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    s3 = AWSClients(Settings(region=region)).s3
    url = Storage(s3, "imagegate-outputs-abc123").presign("outputs/acct_1/2026-01-01/req_1/0.png")
    parts = urlsplit(url)
    assert parts.scheme == "https"
    assert parts.netloc == f"imagegate-outputs-abc123.s3.{region}.amazonaws.com"
    assert parts.path == "/outputs/acct_1/2026-01-01/req_1/0.png"
    assert f"%2F{region}%2Fs3%2Faws4_request" in parts.query  # signed for the bucket's own region
