"""Every finished image job as an EventBridge event, for other AWS services to react to with ordinary rules.

    source       "imagegate"
    detail-type  "Image Job Succeeded" | "Image Job Failed" | "Image Job Cancelled"
    time         the job's completed_at
    detail       the job's detail (jobs.py): the job object with S3 keys in place of URLs and images, plus
                 bucket, account_id, request_id, source and client_reference_id. Never the Step Functions
                 task token, which would let any rule's target answer the caller's task.

The bus is the template parameter EventBusName (the account's `default` bus unless set);
docs/jobs.md, "Webhooks and events", shows the schema and a rule.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

SOURCE = "imagegate"
DETAIL_TYPES = {
    "succeeded": "Image Job Succeeded",
    "failed": "Image Job Failed",
    "cancelled": "Image Job Cancelled",
}
PRIVATE_FIELDS = ("task_token",)


class EventsError(Exception):
    """EventBridge took the call but refused the entry (its ErrorCode and ErrorMessage)."""


class JobEvents:
    """An `on_finished` callback (jobs.py) that publishes the job's event. `aws`: anything with a
    `client(name)` method (AWSClients): the client is made on the first event, not at cold start."""

    def __init__(self, aws: Any, bus: str) -> None:
        self._aws = aws
        self.bus = bus

    def __call__(self, detail: dict[str, Any]) -> None:
        result = self._aws.client("events").put_events(Entries=[self.entry(detail)])
        if result.get("FailedEntryCount"):
            failed = result["Entries"][0]
            raise EventsError(f"EventBridge refused the job event: {failed.get('ErrorCode')}")

    def entry(self, detail: dict[str, Any]) -> dict[str, Any]:
        public = {k: v for k, v in detail.items() if k not in PRIVATE_FIELDS}
        return {
            "Source": SOURCE,
            "DetailType": DETAIL_TYPES[detail["status"]],
            "Detail": json.dumps(public, separators=(",", ":")),
            "EventBusName": self.bus,
            "Time": datetime.fromtimestamp(detail["completed_at"], UTC),
        }
