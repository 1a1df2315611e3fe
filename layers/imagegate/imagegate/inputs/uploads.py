"""Uploads past the request limit: a presigned S3 POST per file, the file read back when an edit names it.

Lambda takes 6 MB per synchronous request (about 4.5 MB of upload once base64-encoded), while GPT-image
edits take images of up to 50 MB. So a client asks `POST /v1/images/uploads` for a `file-…` id and a
presigned POST, sends the bytes straight to S3, and names the id in the JSON form of `/v1/images/edits`.

The object's key is derived from the account and the id (`uploads/<account_id>/<file_id>`), so one account's
id never reaches another account's file: an id is only ever looked up under the caller's own prefix. The
bucket's lifecycle rule expires the files (template: `UploadRetentionDays`). Nothing here trusts the bytes:
the caller decodes them with the same checks as a multipart part (`images.inspect`).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from imagegate import errors
from imagegate.storage import missing

PREFIX = "uploads"
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # OpenAI's limit for one GPT-image input
# How long the presigned POST is accepted. A URL signed with a Lambda role's temporary credentials dies
# with them, which can come sooner (docs/inputs.md, "Large inputs and the JSON form of edits").
UPLOAD_WINDOW_SECONDS = 3600
FILE_ID = re.compile(r"file-[0-9a-f]{32}")  # whole strings only (fullmatch): "$" also matches before "\n"


class Uploads:
    def __init__(
        self,
        s3: Any,
        bucket: str,
        prefix: str = PREFIX,
        clock: Callable[[], float] = time.time,
        max_bytes: int = MAX_UPLOAD_BYTES,
    ) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._prefix = prefix
        self._clock = clock
        self.max_bytes = max_bytes

    def create(self, account_id: str) -> dict[str, Any]:
        """A new file id and the presigned POST that stores its bytes: at most `max_bytes`, with an
        image content type (S3 enforces both; the bytes are judged again on use)."""
        file_id = f"file-{uuid.uuid4().hex}"
        post = self._s3.generate_presigned_post(
            self._bucket,
            self.key(account_id, file_id),
            Conditions=[
                ["content-length-range", 1, self.max_bytes],
                ["starts-with", "$Content-Type", "image/"],
            ],
            ExpiresIn=UPLOAD_WINDOW_SECONDS,
        )
        return {
            "id": file_id,
            "object": "upload",
            "upload_url": post["url"],
            "upload_fields": post["fields"],
            "expires_at": int(self._clock()) + UPLOAD_WINDOW_SECONDS,
            "max_bytes": self.max_bytes,
        }

    def key(self, account_id: str, file_id: str) -> str:
        return f"{self._prefix}/{account_id}/{file_id}"

    def read(self, account_id: str, file_id: str, param: str) -> bytes:
        """The bytes of one of the account's files, as one copy; a 400 naming `param` when the id is not
        the account's (malformed, never uploaded, expired, or another account's) or the file is too big."""
        if not FILE_ID.fullmatch(file_id):
            raise errors.invalid(
                f"Invalid '{param}': expected a file id from POST /v1/images/uploads ('file-' and 32 hex "
                "digits).",
                param,
                "invalid_file_id",
            )
        try:
            obj = self._s3.get_object(Bucket=self._bucket, Key=self.key(account_id, file_id))
        except ClientError as exc:
            if not missing(exc):
                raise
            # The same answer for another account's id as for one never uploaded: nothing to learn from it.
            raise errors.invalid(
                f"Invalid '{param}': no uploaded file '{file_id}' for this account (files expire; "
                "upload it again).",
                param,
                "file_not_found",
            ) from exc
        body = obj["Body"]
        with body:
            # The POST policy caps the size on AWS; an emulator does not check it, and a file is never
            # read past the cap either way.
            if obj["ContentLength"] > self.max_bytes:
                raise errors.invalid(
                    f"Invalid '{param}': the file is larger than {self.max_bytes} bytes.",
                    param,
                    "image_too_large",
                )
            # One read of a known length: urllib3 and http.client fill a single buffer (a 20 MB file
            # peaks at 20 MB here; docs/inputs.md, "Large inputs").
            return body.read()
