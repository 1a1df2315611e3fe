"""Output images in S3: one encrypted object per image under the account's prefix, served by presigned URL."""

from __future__ import annotations

import time
from typing import Any

# The media types of the output formats every wing writes (S3 objects, uploads to upstreams).
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class Storage:
    def __init__(self, s3: Any, bucket: str, prefix: str = "outputs", url_ttl_seconds: int = 3600) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._prefix = prefix
        self.url_ttl_seconds = url_ttl_seconds

    def put_images(
        self, account_id: str, request_id: str, images: list[bytes], output_format: str
    ) -> list[str]:
        """Write every image or none: on a failed write, the ones already written are deleted."""
        day = time.strftime("%Y-%m-%d", time.gmtime())
        keys: list[str] = []
        try:
            for i, data in enumerate(images):
                key = f"{self._prefix}/{account_id}/{day}/{request_id}/{i}.{output_format}"
                self.put(key, data, CONTENT_TYPES[output_format])
                keys.append(key)
        except Exception:
            for key in keys:
                self.delete(key)
            raise
        return keys

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """One object under any prefix (jobs/lifecycle.py: a job's input images, under `inputs/`)."""
        self._s3.put_object(
            Bucket=self._bucket, Key=key, Body=data, ContentType=content_type, ServerSideEncryption="AES256"
        )

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self._bucket, Key=key)

    def presign(self, key: str) -> str:
        """A GET URL signed at response time, so it lives its full TTL (docs/limits.md: role credentials)."""
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=self.url_ttl_seconds
        )

    def get(self, key: str) -> bytes:
        """An object written earlier: an image to replay as b64_json, a job's input image."""
        return self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()


# S3's answers for an object that is not there for this caller: 404 when the role may list the bucket, and
# 403 AccessDenied when it may not (the functions have no s3:ListBucket), so both mean "no such object".
MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404", "AccessDenied", "403"})


def missing(exc: Exception) -> bool:
    """Whether an S3 error says the object is not there (or not this caller's to read)."""
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code", "") in MISSING_CODES
