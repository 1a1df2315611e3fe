"""CodeDeploy's pre-traffic hook (template parameter PreTrafficCheck=true).

Before CodeDeploy moves any of a function's `live` traffic to a new version, it calls this hook with the
deployment's id. The hook looks up the version the deployment moves to, sends it one real request that
costs nothing and reaches no upstream, and reports Succeeded or Failed; Failed stops the rollout with the
alias where it was. The request depends on the function's kind (IMAGEGATE_PROBES maps each function name
to one): an API function gets the keyless request SnapStart primes with and must answer OpenAI's 401 (Stripe's
webhook: an unsigned event, its 400); a
queue consumer gets a message about a job that does not exist, which it must drop (the usage function: a
stream record that closes no request); the sweeper runs a sweep
(its schedule's own work); the invoke function gets an empty request, which it must refuse in OpenAI's shape.

The hook always reports: a hook that raised would leave CodeDeploy waiting an hour for its verdict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aws_lambda_powertools.logging import Logger

from imagegate.aws import AWSClients
from imagegate.http.api import METHODS, PATHS

# Seconds the hook keeps, after the last probe, to report its verdict.
REPORT_MARGIN_S = 10
OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}
_PROBE_JOB = {"account_id": "acct_pretraffic", "job_id": "imgjob_pretraffic"}
# What each queue consumer gets: a job, or a job's webhook delivery, that does not exist; for the requests
# queue an EventBridge event no rule of the stack sends. Each is dropped, nothing read is written.
_QUEUED = {
    "worker": _PROBE_JOB,
    "webhooks": {**_PROBE_JOB, "type": "image.job.succeeded", "data": {"id": _PROBE_JOB["job_id"]}},
    "requests": {"detail-type": "Pre-traffic Check", "source": "imagegate", "id": "pretraffic"},
}

# What the usage function gets: a stream record of a job's change, which closes no request: nothing counted.
_STREAM = {
    "Records": [
        {
            "eventID": "pretraffic",
            "eventName": "MODIFY",
            "eventSource": "aws:dynamodb",
            "dynamodb": {
                "SequenceNumber": "1",
                "Keys": {"pk": {"S": f"ACCOUNT#{_PROBE_JOB['account_id']}"}, "sk": {"S": "JOB#pretraffic"}},
            },
        }
    ]
}


def unauthenticated_event(method: str, path: str, stage: str = "api") -> dict[str, Any]:
    """An API Gateway (REST, proxy) request without an Authorization header: refused with 401 before
    anything reaches AWS or an upstream."""
    headers = {"content-type": "application/json", "host": "pretraffic.invalid"}
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "requestContext": {"stage": stage, "requestId": "pretraffic", "identity": {"sourceIp": "127.0.0.1"}},
        "body": "{}" if method == "POST" else None,
        "isBase64Encoded": False,
    }


def _sqs_event(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": "00000000-0000-4000-8000-000000000000",
                "receiptHandle": "pretraffic",
                "body": json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:pretraffic",
                "awsRegion": "us-east-1",
            }
        ]
    }


def _openai_error(answer: Any, status: int | None = None) -> str | None:
    """None when `answer` is an OpenAI-shaped error (in an API Gateway response when `status` is given)."""
    if status is not None:
        if not isinstance(answer, dict) or answer.get("statusCode") != status:
            return f"expected HTTP {status}, got {str(answer)[:300]}"
        try:
            answer = json.loads(answer.get("body") or "")
        except ValueError:
            return f"HTTP {status} without a JSON body: {str(answer)[:300]}"
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict) or set(error) != OPENAI_ERROR_KEYS:
        return f"not an OpenAI error object: {str(answer)[:300]}"
    return None


def _dropped(answer: Any) -> str | None:
    return None if answer == {"batchItemFailures": []} else f"the message was kept: {str(answer)[:300]}"


def _swept(answer: Any) -> str | None:
    return (
        None if isinstance(answer, dict) and "closed" in answer else f"no sweep result: {str(answer)[:300]}"
    )


Probe = tuple[dict[str, Any], Callable[[Any], str | None]]


def probe(kind: str) -> Probe:
    """The request for a function of this kind, and its check (None: passed, else what was wrong)."""
    if kind in PATHS:
        path = PATHS[kind]  # type: ignore[index]
        # Stripe's webhook has no key to refuse: an unsigned event is its 400, and changes nothing.
        status = 400 if kind == "stripe_webhook" else 401
        return unauthenticated_event(METHODS[path], path), lambda answer: _openai_error(answer, status)
    if kind in _QUEUED:
        return _sqs_event(_QUEUED[kind]), _dropped
    if kind == "usage":
        return _STREAM, _dropped
    if kind == "sweep":
        return {"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}, _swept
    if kind == "invoke":
        return {}, _openai_error
    raise KeyError(kind)


class PreTrafficHook:
    """The hook: `probes` maps function names to kinds (IMAGEGATE_PROBES)."""

    def __init__(self, aws: AWSClients, probes: Mapping[str, str], logger: Logger) -> None:
        self.aws = aws
        self.probes = dict(probes)
        self.logger = logger

    def __call__(self, event: dict[str, Any], context: Any) -> str:
        deployment = event["DeploymentId"]
        failures: list[str] = []
        try:
            for function, version in self.targets(deployment):
                failure = self.check(function, version, context.get_remaining_time_in_millis() / 1000)
                self.logger.info(
                    "pre-traffic check", extra={"function": function, "version": version, "failure": failure}
                )
                if failure:
                    failures.append(f"{function}:{version}: {failure}")
        # Whatever went wrong (an AWS error, a probe that could not run), CodeDeploy must hear of it now.
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        status = "Failed" if failures else "Succeeded"
        if failures:
            self.logger.error("pre-traffic check failed", extra={"failures": failures})
        self.aws.client("codedeploy").put_lifecycle_event_hook_execution_status(
            deploymentId=deployment,
            lifecycleEventHookExecutionId=event["LifecycleEventHookExecutionId"],
            status=status,
        )
        return status

    def targets(self, deployment: str) -> Iterator[tuple[str, str]]:
        """(function name, version) of each function the deployment moves: one for SAM's deployments."""
        codedeploy = self.aws.client("codedeploy")
        for target_id in codedeploy.list_deployment_targets(deploymentId=deployment).get("targetIds", []):
            target = codedeploy.get_deployment_target(deploymentId=deployment, targetId=target_id)
            info = target["deploymentTarget"]["lambdaTarget"]["lambdaFunctionInfo"]
            yield info["functionName"].rsplit(":function:", 1)[-1], info["targetVersion"]

    def check(self, function: str, version: str, remaining_s: float) -> str | None:
        kind = self.probes.get(function)
        if kind is None:
            return "no probe for this function: add it to PreTrafficHookFunction's IMAGEGATE_PROBES"
        request, passed = probe(kind)
        client = self.aws.client(
            "lambda", read_timeout=max(1.0, remaining_s - REPORT_MARGIN_S), max_attempts=1
        )
        response = client.invoke(FunctionName=function, Qualifier=version, Payload=json.dumps(request))
        payload = response["Payload"].read().decode("utf-8", "replace")
        if response.get("FunctionError"):
            return f"the function failed ({response['FunctionError']}): {payload[:300]}"
        try:
            answer = json.loads(payload)
        except ValueError:
            return f"not JSON: {payload[:300]}"
        return passed(answer)
