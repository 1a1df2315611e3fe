"""The pre-traffic hook: it finds the version a deployment moves to, sends it its kind's free request and
always reports a verdict to CodeDeploy (botocore's Stubber stands for CodeDeploy and Lambda)."""

import io
import json

import botocore.session
import pytest
from aws_lambda_powertools.logging import Logger
from botocore.response import StreamingBody
from botocore.stub import Stubber

from imagegate.http.api import PATHS
from imagegate.http.pretraffic import PreTrafficHook, probe

DEPLOYMENT = "d-ABCDEFGHI"
EXECUTION = "exec-0123"
FUNCTION = "imagegate-BalanceFunction-AbC123"
PROBES = {FUNCTION: "balance"}
UNAUTHORIZED = {
    "statusCode": 401,
    "headers": {"content-type": "application/json"},
    "body": json.dumps(
        {
            "error": {
                "message": "No API key.",
                "type": "invalid_request_error",
                "param": None,
                "code": "missing_api_key",
            }
        }
    ),
}


class Context:
    def get_remaining_time_in_millis(self) -> int:
        return 300_000


class StubbedAWS:
    """AWSClients' `client` for the two services the hook calls, each behind a Stubber."""

    def __init__(self) -> None:
        session = botocore.session.get_session()
        session.set_credentials("testing", "testing")
        self.clients = {
            s: session.create_client(s, region_name="us-east-1") for s in ("codedeploy", "lambda")
        }
        self.stubs = {s: Stubber(c) for s, c in self.clients.items()}
        self.read_timeouts: list[float] = []

    def client(self, service: str, region: str | None = None, *, read_timeout=None, max_attempts=3):
        if service == "lambda":
            self.read_timeouts.append(read_timeout)
        return self.clients[service]

    def target(self, function: str = FUNCTION, version: str = "7") -> None:
        stub = self.stubs["codedeploy"]
        target_id = f"{function}:live"
        stub.add_response("list_deployment_targets", {"targetIds": [target_id]}, {"deploymentId": DEPLOYMENT})
        info = {
            "functionName": function,
            "functionAlias": "live",
            "currentVersion": "6",
            "targetVersion": version,
        }
        stub.add_response(
            "get_deployment_target",
            {
                "deploymentTarget": {
                    "deploymentTargetType": "LambdaTarget",
                    "lambdaTarget": {"lambdaFunctionInfo": info},
                }
            },
            {"deploymentId": DEPLOYMENT, "targetId": target_id},
        )

    def answer(self, payload: object, function_error: str | None = None, version: str = "7") -> None:
        request, _ = probe("balance")
        raw = json.dumps(payload).encode()
        response = {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(raw), len(raw))}
        if function_error:
            response["FunctionError"] = function_error
        self.stubs["lambda"].add_response(
            "invoke",
            response,
            {"FunctionName": FUNCTION, "Qualifier": version, "Payload": json.dumps(request)},
        )

    def verdict(self, status: str) -> None:
        self.stubs["codedeploy"].add_response(
            "put_lifecycle_event_hook_execution_status",
            {"lifecycleEventHookExecutionId": EXECUTION},
            {"deploymentId": DEPLOYMENT, "lifecycleEventHookExecutionId": EXECUTION, "status": status},
        )

    def run(self, probes: dict[str, str] = PROBES) -> str:
        for stub in self.stubs.values():
            stub.activate()
        hook = PreTrafficHook(self, probes, Logger(service="test", level="CRITICAL"))  # type: ignore[arg-type]
        status = hook({"DeploymentId": DEPLOYMENT, "LifecycleEventHookExecutionId": EXECUTION}, Context())
        for stub in self.stubs.values():
            stub.assert_no_pending_responses()
        return status


@pytest.fixture
def aws():
    return StubbedAWS()


def test_a_version_that_refuses_a_keyless_request_in_openai_shape_passes(aws):
    aws.target()
    aws.answer(UNAUTHORIZED)
    aws.verdict("Succeeded")
    assert aws.run() == "Succeeded"
    # The invocation may take what the hook has left, less the time to report.
    assert aws.read_timeouts == [290.0]


@pytest.mark.parametrize(
    ("payload", "function_error"),
    [
        ({"errorMessage": "No module named 'imagegate'", "errorType": "ImportError"}, "Unhandled"),
        ({**UNAUTHORIZED, "statusCode": 500}, None),
        ({**UNAUTHORIZED, "body": '{"detail": "Not authenticated"}'}, None),  # not OpenAI's shape
    ],
)
def test_a_version_that_fails_or_answers_otherwise_stops_the_rollout(aws, payload, function_error):
    aws.target()
    aws.answer(payload, function_error)
    aws.verdict("Failed")
    assert aws.run() == "Failed"


def test_a_function_without_a_probe_fails_its_rollout_without_being_called(aws):
    aws.target(function="imagegate-NewFunction-XyZ")
    aws.verdict("Failed")
    assert aws.run() == "Failed"


def test_codedeploy_hears_a_verdict_even_when_the_lookup_fails(aws):
    aws.stubs["codedeploy"].add_client_error("list_deployment_targets", "AccessDeniedException")
    aws.verdict("Failed")
    assert aws.run() == "Failed"


@pytest.mark.parametrize("kind", [*PATHS, "worker", "webhooks", "requests", "sweep", "invoke", "usage"])
def test_every_kind_has_a_request_and_a_check_that_can_fail(kind):
    request, check = probe(kind)
    assert json.loads(json.dumps(request)) == request
    assert check({"unexpected": True}) is not None
    assert check(None) is not None


def test_each_check_accepts_its_kinds_answer():
    assert probe("generations")[1](UNAUTHORIZED) is None
    assert probe("worker")[1]({"batchItemFailures": []}) is None
    assert probe("worker")[1]({"batchItemFailures": [{"itemIdentifier": "x"}]}) is not None
    assert probe("sweep")[1]({"closed": 0, "charged_micros": 0}) is None
    invalid = {"error": {"message": "m", "type": "invalid_request_error", "param": "prompt", "code": None}}
    assert probe("invoke")[1](invalid) is None
