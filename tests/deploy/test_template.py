"""template.yaml, checked as data: least privilege, alarms that can be delivered, an API whose own errors
speak OpenAI's shape, limits and timeouts that agree with the code, state that outlives the stack."""

import copy
import json
import re

import pytest

from imagegate.config import (
    COLD_START_ALLOWANCE_SECONDS,
    FINISH_ALLOWANCE_SECONDS,
    JOB_MAX_DELIVERIES,
    Deadlines,
    Settings,
    visibility_timeout,
)
from imagegate.jobs.webhooks import ATTEMPT_TIMEOUT_S, DELAYS_S, MAX_ATTEMPTS, MAX_RECEIVES, MAX_VISIBILITY_S

from .cfn import ROOT, Stack, actions, functions, statements, template

READ_VERBS = re.compile(r"^(dynamodb:(GetItem|BatchGetItem|Query)|s3:GetObject)$")
AWS_MANAGED_KEY = re.compile(r"^(alias/)?aws/")
# What a function that can finish a job needs besides its own work: the event, the webhook delivery, and
# the answer to the AWS service that asked (a Step Functions task, an S3 manifest's results/).
NOTIFY = {
    "events:PutEvents",
    "sqs:SendMessage",
    "states:SendTaskSuccess",
    "states:SendTaskFailure",
    "s3:PutObject",
}


# --- least privilege ------------------------------------------------------------------------------------


def iam_statements(document: dict) -> list[tuple[str, dict]]:
    """(owner, statement) for every identity policy in a template: function policies and IAM resources.
    Resource policies (a KMS key's, a bucket's) are not identity grants and are left out."""
    found = []
    for name, resource in document["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            for policy in props.get("Policies", []):
                if isinstance(policy, dict) and "Statement" in policy:
                    found += [(name, s) for s in policy["Statement"]]
        elif resource["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            found += [(name, s) for s in props["PolicyDocument"]["Statement"]]
        elif resource["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                found += [(name, s) for s in policy["PolicyDocument"]["Statement"]]
    flat = []
    for owner, statement in found:
        if list(statement) == ["Fn::If"]:
            flat += [(owner, s) for s in statement["Fn::If"][1:] if "Ref" not in s]
        else:
            flat.append((owner, statement))
    return flat


def wildcard_actions(document: dict) -> list[str]:
    bad = []
    for owner, statement in iam_statements(document):
        listed = statement.get("Action", [])
        for action in [listed] if isinstance(listed, str) else listed:
            if "*" in action:
                bad.append(f"{owner}: {action}")
        if "NotAction" in statement:
            bad.append(f"{owner}: NotAction")
    return bad


def write_actions(allowed: set[str]) -> set[str]:
    return {a for a in allowed if not READ_VERBS.match(a)}


def test_no_identity_policy_grants_a_wildcard_action():
    assert wildcard_actions(template()) == []


def test_the_wildcard_check_catches_one():
    document = copy.deepcopy(template())
    document["Resources"]["BalanceFunction"]["Properties"]["Policies"][0]["Statement"][0]["Action"] = [
        "dynamodb:*"
    ]
    assert wildcard_actions(document) == ["BalanceFunction: dynamodb:*"]


def test_the_read_only_balance_function_can_only_read():
    allowed = actions("BalanceFunction")
    assert allowed == {"dynamodb:GetItem", "dynamodb:Query"}
    assert write_actions(allowed) == set()


def test_the_write_check_catches_a_write_on_the_balance_function():
    assert write_actions({"dynamodb:GetItem", "s3:PutObject", "dynamodb:UpdateItem"}) == {
        "s3:PutObject",
        "dynamodb:UpdateItem",
    }


def test_each_function_gets_only_its_own_actions():
    image = actions("GenerationsFunction")
    assert image == actions("EditsFunction") == actions("VariationsFunction")
    assert "bedrock:InvokeModel" in image and "secretsmanager:GetSecretValue" in image
    sweep = actions("SweepFunction", Stack())
    # No S3, no secrets, no Bedrock: the table, and the notifications of the jobs it fails (and, with a
    # CatalogSource, that one object or parameter: a test of its own below).
    assert not {a for a in sweep if not a.startswith("dynamodb:")} - NOTIFY
    assert "dynamodb:DeleteItem" not in sweep
    # Nothing conditional is granted by default: no secret, no parameter, no key, no Bedrock.
    assert actions("GenerationsFunction", Stack()) == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "s3:PutObject",
        "s3:GetObject",
        "s3:DeleteObject",
        "sqs:SendMessage",  # a job's submit
        *NOTIFY,
    }
    # The worker calls the upstreams as the image functions do and reads job inputs; it queues no job, only
    # the webhook deliveries of the jobs it finishes, and answers the Step Functions tasks of jobs from AWS
    # services (triggers.Answers).
    assert actions("WorkerFunction") == image
    assert resources("WorkerFunction", "sqs:SendMessage") == [{"Fn::GetAtt": ["WebhookDeliveryQueue", "Arn"]}]
    jobs = actions("JobsFunction")
    assert jobs == {
        "dynamodb:GetItem",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "s3:GetObject",
        *NOTIFY,  # a cancel finishes its job
    }


def test_the_stripe_webhook_writes_only_credits_and_reads_only_the_stripe_secret():
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:imagegate/upstreams-AbCdEf"
    webhook = actions("StripeWebhookFunction", Stack(UpstreamCredentialsSecretArn=secret))
    assert webhook == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "secretsmanager:GetSecretValue",
    }
    account = actions("AccountFunction", Stack())
    # Keys and reads; no DeleteItem, no Bedrock, no writes to S3, no queue.
    assert account == {
        "dynamodb:GetItem",
        "dynamodb:Query",
        "dynamodb:BatchGetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:ConditionCheckItem",
        "s3:GetObject",
    }
    assert "TopupPacks" in template()["Parameters"]
    assert Stack(TopupPacks='{"packs": []}').environment()["IMAGEGATE_TOPUPS"] == '{"packs": []}'


def test_a_separate_stripe_secret_is_readable_by_the_account_and_webhook_functions_only():
    upstreams = "arn:aws:secretsmanager:us-east-1:123456789012:secret:imagegate/upstreams-AbCdEf"
    stripe = "arn:aws:secretsmanager:us-east-1:123456789012:secret:imagegate/stripe-GhIjKl"
    kms = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    stack = Stack(
        UpstreamCredentialsSecretArn=upstreams,
        StripeCredentialsSecretArn=stripe,
        UpstreamCredentialsKmsKeyArn=kms,
    )
    assert stack.environment()["IMAGEGATE_STRIPE_SECRET_ARN"] == stripe

    def secrets(function):
        return {
            stack.resolve(s["Resource"])
            for s in statements(function, stack)
            if "secretsmanager:GetSecretValue" in s["Action"]
        }

    readers = {name for name in functions() if stripe in secrets(name)}
    assert readers == {"AccountFunction", "StripeWebhookFunction"}
    # Those two read no upstream key; every function that did still does, and nothing else.
    assert secrets("AccountFunction") == secrets("StripeWebhookFunction") == {stripe}
    assert secrets("GenerationsFunction") == secrets("WorkerFunction") == {upstreams}
    assert "dynamodb:GetItem" in actions("AccountFunction", stack)  # API keys are still looked up
    # Without it, today's single secret: the Stripe functions read the upstream secret, which holds the keys.
    single = Stack(UpstreamCredentialsSecretArn=upstreams)
    policies = single.resolve(functions()["AccountFunction"]["Properties"]["Policies"])
    assert "CredentialsPolicy" in policies and "StripeCredentialsPolicy" not in policies
    assert "secretsmanager:GetSecretValue" in actions("StripeWebhookFunction", single)


def test_signature_failures_and_unapplied_credits_raise_alarms():
    expressions = {
        name: str(r["Properties"].get("Metrics"))
        for name, r in template()["Resources"].items()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert "StripeSignatureFailures" in expressions["StripeSignatureFailuresAlarm"]
    assert "TopupsUnapplied" in expressions["TopupsUnappliedAlarm"]


def resources(function: str, action: str) -> list:
    return [s["Resource"] for s in statements(function) if action in s["Action"]]


def test_job_inputs_are_written_by_submits_read_by_the_worker_and_expire_in_a_day():
    inputs = {"Fn::Sub": "${OutputsBucket.Arn}/inputs/*"}
    assert inputs in resources("GenerationsFunction", "s3:PutObject")
    assert inputs in resources("WorkerFunction", "s3:GetObject")
    assert inputs not in resources("JobsFunction", "s3:GetObject")
    rules = template()["Resources"]["OutputsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    [rule] = [r for r in rules if r["Prefix"] == "inputs/"]
    assert rule["ExpirationInDays"] == 1


def test_the_worker_timeout_drives_the_worker_its_budget_and_the_queue():
    document = template()
    resources_ = document["Resources"]
    worker = resources_["WorkerFunction"]["Properties"]
    assert worker["Timeout"] == {"Ref": "WorkerTimeout"}
    assert document["Parameters"]["WorkerTimeout"]["Default"] == "900"
    [event] = worker["Events"].values()
    assert event["Type"] == "SQS" and event["Properties"]["BatchSize"] == 1
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    queue = resources_["JobsQueue"]["Properties"]
    assert queue["VisibilityTimeout"] == {
        "Fn::FindInMap": ["WorkerTimeout", {"Ref": "WorkerTimeout"}, "Visibility"]
    }
    assert queue["RedrivePolicy"]["maxReceiveCount"] == JOB_MAX_DELIVERIES
    for seconds in document["Parameters"]["WorkerTimeout"]["AllowedValues"]:
        visibility = document["Mappings"]["WorkerTimeout"][seconds]["Visibility"]
        assert visibility == visibility_timeout(int(seconds)) >= 6 * int(seconds)
        settings = Settings.from_env(Stack(WorkerTimeout=seconds).environment()).for_worker()
        assert settings.worker_timeout_seconds == int(seconds)
        total = COLD_START_ALLOWANCE_SECONDS + settings.upstream_budget_seconds + FINISH_ALLOWANCE_SECONDS
        assert total <= int(seconds)
        # Every message is delivered, or in the dead-letter queue, before the queue would drop it.
        assert Deadlines(worker_s=int(seconds)).job_start_s < queue["MessageRetentionPeriod"]
    alarm = resources_["JobsDeadLetterAlarm"]["Properties"]
    assert alarm["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["JobsDeadLetterQueue", "QueueName"]}


def test_every_function_that_finishes_jobs_publishes_them_and_only_the_delivery_function_delivers():
    finishing = {"GenerationsFunction", "EditsFunction", "VariationsFunction", "SweepFunction"}
    finishing |= {"WorkerFunction", "JobsFunction", "RequestsFunction", "InvokeFunction"}
    for name in finishing:
        assert {"Ref": "JobNotificationsPolicy"} in functions()[name]["Properties"]["Policies"], name
        assert actions(name) >= NOTIFY
    assert actions("WebhooksFunction") == {
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "sqs:ChangeMessageVisibility",
        "kms:Decrypt",  # webhook secrets, and only those
    }
    assert "sqs:ChangeMessageVisibility" not in set().union(*(actions(f) for f in finishing))


def test_the_delivery_queue_outlives_the_retry_schedule_and_keeps_records_the_function_reports():
    resources = template()["Resources"]
    queue = resources["WebhookDeliveryQueue"]["Properties"]
    function = resources["WebhooksFunction"]["Properties"]
    assert queue["MessageRetentionPeriod"] > sum(DELAYS_S) + 3600
    assert queue["RedrivePolicy"]["maxReceiveCount"] == MAX_RECEIVES > MAX_ATTEMPTS
    assert queue["VisibilityTimeout"] >= 6 * function["Timeout"]
    assert function["Timeout"] >= 3 * ATTEMPT_TIMEOUT_S  # connect, send and answer, each capped
    assert max(DELAYS_S) <= MAX_VISIBILITY_S  # each wait fits one visibility timeout
    source = function["Events"]["Deliveries"]["Properties"]
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    env = Stack().environment()
    assert (env["IMAGEGATE_EVENT_BUS"], env["IMAGEGATE_WEBHOOK_QUEUE_URL"]) == (
        "default",
        "WebhookDeliveryQueue",
    )


def test_uploads_are_signed_read_and_expired_under_their_own_prefix_only():
    uploads = {"Fn::Sub": "${OutputsBucket.Arn}/uploads/*"}
    # Presigned POSTs are authorised by the signer's own s3:PutObject: under uploads/ and nothing else.
    assert resources("UploadsFunction", "s3:PutObject") == [uploads]
    assert actions("UploadsFunction") == {"dynamodb:GetItem", "dynamodb:UpdateItem", "s3:PutObject"}
    # Only the edits function reads uploads (JSON edits name them; a job's copy goes to inputs/), and it
    # may not write there.
    assert uploads in resources("EditsFunction", "s3:GetObject")
    for function in ("GenerationsFunction", "VariationsFunction", "WorkerFunction", "JobsFunction"):
        assert uploads not in resources(function, "s3:GetObject")
    for function in ("GenerationsFunction", "EditsFunction", "VariationsFunction", "WorkerFunction"):
        assert uploads not in resources(function, "s3:PutObject")
    rules = template()["Resources"]["OutputsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    [expiry] = [r for r in rules if r["Prefix"] == "uploads/"]
    assert expiry["ExpirationInDays"] == {"Ref": "UploadRetentionDays"}
    assert template()["Parameters"]["UploadRetentionDays"]["MinValue"] == 1


def test_a_customer_managed_key_gets_decrypt_through_secrets_manager_and_ssm_only():
    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert "kms:Decrypt" not in actions("GenerationsFunction", Stack())
    [statement] = [
        s
        for s in statements("GenerationsFunction", Stack(UpstreamCredentialsKmsKeyArn=key))
        if "kms" in str(s)
    ]
    assert statement["Action"] == "kms:Decrypt"
    assert "kms:ViaService" in statement["Condition"]["StringEquals"]


@pytest.mark.parametrize(
    ("arn", "ok"),
    [
        ("", True),
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:imagegate/upstreams-AbCdEf", True),
        ("arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:up-123abc", True),
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:imagegate/upstreams", False),  # partial
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:upstreams-AbC", False),
        ("imagegate/upstreams", False),
    ],
)
def test_the_secret_arn_must_be_complete(arn, ok):
    pattern = template()["Parameters"]["UpstreamCredentialsSecretArn"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, arn)) is ok


# --- alarms that arrive ---------------------------------------------------------------------------------


def undeliverable_alarm_topics(document: dict) -> list[str]:
    """Topics that alarms notify but CloudWatch cannot publish to: encrypted under an AWS-managed key
    (alias/aws/sns admits no service principal), or under a key whose policy does not admit CloudWatch."""
    resources = document["Resources"]
    topics = {
        a["Ref"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        for a in json.loads(
            json.dumps(r["Properties"].get("AlarmActions", [])).replace('"Fn::If"', '"If"')
        ).get("If", [None, [], []])[1]
        if isinstance(a, dict) and "Ref" in a
    }
    assert topics, "no alarm notifies a topic"
    bad = []
    for name in sorted(topics):
        key = resources[name]["Properties"].get("KmsMasterKeyId")
        if key is None:
            continue
        if isinstance(key, str):
            if AWS_MANAGED_KEY.match(key):
                bad.append(f"{name}: {key}")
            continue
        policy = resources[key["Ref"]]["Properties"]["KeyPolicy"]["Statement"]
        admits = [
            s
            for s in policy
            if s.get("Principal", {}).get("Service") == "cloudwatch.amazonaws.com"
            and {"kms:Decrypt", "kms:GenerateDataKey*"} <= set(s["Action"])
        ]
        if not admits:
            bad.append(f"{name}: key {key['Ref']} does not admit cloudwatch.amazonaws.com")
    return bad


def test_alarm_topics_can_be_published_to_by_cloudwatch():
    assert undeliverable_alarm_topics(template()) == []


def test_the_alarm_check_catches_the_aws_managed_sns_key():
    document = copy.deepcopy(template())
    document["Resources"]["AlarmTopic"]["Properties"]["KmsMasterKeyId"] = "alias/aws/sns"
    assert undeliverable_alarm_topics(document) == ["AlarmTopic: alias/aws/sns"]


def functions_without_an_errors_alarm(document: dict) -> list[str]:
    """Every function but CodeDeploy's hooks: a hook that fails fails the rollout it checks, in the deploy
    itself, and its errors must not count as the errors of the functions it tests."""
    hooks = document["Globals"]["Function"]["DeploymentPreference"]["Hooks"].values()
    hooks = {h["Fn::If"][1]["Ref"] if "Fn::If" in h else h["Ref"] for h in hooks}
    watched = set()
    for resource in document["Resources"].values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        for metric in resource["Properties"].get("Metrics", []):
            stat = metric.get("MetricStat", {}).get("Metric", {})
            if stat.get("MetricName") == "Errors":
                watched |= {d["Value"]["Ref"] for d in stat["Dimensions"] if isinstance(d["Value"], dict)}
    return sorted(
        name
        for name, r in document["Resources"].items()
        if r["Type"] == "AWS::Serverless::Function" and name not in watched | hooks
    )


def test_every_function_raising_errors_sets_off_an_alarm():
    # A function added without one fails unseen: its crashes are no client's 5xx, only a log line.
    assert functions_without_an_errors_alarm(template()) == []


def test_the_errors_alarm_check_catches_a_function_left_out():
    document = copy.deepcopy(template())
    metrics = document["Resources"]["FunctionErrorsAlarm"]["Properties"]["Metrics"]
    metrics[:] = [m for m in metrics if m["Id"] != "h"]
    assert functions_without_an_errors_alarm(document) == ["WebhooksFunction"]


def test_alarm_email_is_documented_as_what_makes_alarms_act():
    assert "notify nobody" in template()["Parameters"]["AlarmEmail"]["Description"]


# --- the REST API ---------------------------------------------------------------------------------------


def api() -> dict:
    [(name, resource)] = [
        (n, r)
        for n, r in template()["Resources"].items()
        if r["Type"].startswith("AWS::Serverless::") and "Api" in r["Type"]
    ]
    assert (name, resource["Type"]) == ("RestApi", "AWS::Serverless::Api")
    return resource["Properties"]


GATEWAY_ERRORS = {
    "DEFAULT_4XX": None,
    "DEFAULT_5XX": None,
    "MISSING_AUTHENTICATION_TOKEN": 404,
    "RESOURCE_NOT_FOUND": 404,
    "REQUEST_TOO_LARGE": 413,
    "THROTTLED": 429,
    "QUOTA_EXCEEDED": 429,
    "INTEGRATION_TIMEOUT": 504,
    "INTEGRATION_FAILURE": 502,
    "WAF_FILTERED": 403,
}


@pytest.mark.parametrize(("kind", "status"), GATEWAY_ERRORS.items())
def test_gateway_errors_are_openai_shaped_with_the_request_id(kind, status):
    response = api()["GatewayResponses"][kind]
    assert response.get("StatusCode") == status
    assert response["ResponseParameters"]["Headers"]["x-request-id"] == "context.requestId"
    body = response["ResponseTemplates"]["application/json"]
    # API Gateway substitutes $context variables; messageString comes quoted.
    rendered = body.replace("$context.error.messageString", '"Forbidden"')
    rendered = re.sub(r"\$context\.\w+", "x", rendered)
    error = json.loads(rendered)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["code"]


def test_api_takes_multipart_as_binary_throttles_the_stage_and_logs_access():
    props = api()
    assert props["BinaryMediaTypes"] == ["multipart~1form-data"]
    [setting] = props["MethodSettings"]
    assert setting["ThrottlingBurstLimit"] == {"Ref": "ThrottlingBurstLimit"}
    assert setting["ThrottlingRateLimit"] == {"Ref": "ThrottlingRateLimit"}
    params = template()["Parameters"]
    assert params["ThrottlingBurstLimit"]["MinValue"] == params["ThrottlingRateLimit"]["MinValue"] == 1
    access_logs = Stack(ApiGatewayCloudWatchRoleArn="existing").resolve(props["AccessLogSetting"])
    assert "authorization" not in access_logs["Format"].lower()
    assert "ApiBaseUrl" in template()["Outputs"]


def test_one_function_per_endpoint_each_with_its_own_route():
    routes = {}
    for name, function in functions().items():
        for event in function["Properties"].get("Events", {}).values():
            if event["Type"] == "Api":
                assert event["Properties"]["RestApiId"] == {"Ref": "RestApi"}
                routes[event["Properties"]["Path"]] = name
    assert routes == {
        "/v1/images/generations": "GenerationsFunction",
        "/api/images/generations": "GenerationsFunction",
        "/v1/models": "ModelsFunction",
        "/v1/models/{model}": "ModelsFunction",
        "/v1/images/edits": "EditsFunction",
        "/v1/images/variations": "VariationsFunction",
        "/v1/balance": "BalanceFunction",
        "/v1/images/jobs": "JobsFunction",
        "/v1/images/jobs/{id}": "JobsFunction",
        "/v1/images/jobs/{id}/cancel": "JobsFunction",
        "/v1/images/uploads": "UploadsFunction",
        **dict.fromkeys(
            (
                "/v1/billing/packs",
                "/v1/billing/checkout",
                "/v1/billing/topups",
                "/v1/dashboard/billing/subscription",
                "/v1/dashboard/billing/usage",
                "/v1/usage/requests",
                "/v1/keys",
                "/v1/keys/{key_id}/revoke",
                "/v1/prices",
                "/console",
                "/console/{name}",
            ),
            "AccountFunction",
        ),
        "/v1/billing/stripe/webhook": "StripeWebhookFunction",
    }


def test_integration_timeout_drives_the_gateway_the_functions_and_the_upstream_budget():
    document = template()
    allowed = document["Parameters"]["IntegrationTimeoutSeconds"]["AllowedValues"]
    mapping = document["Mappings"]["IntegrationTimeout"]
    assert document["Globals"]["Function"]["Timeout"] == {"Ref": "IntegrationTimeoutSeconds"}
    for seconds in allowed:
        assert mapping[seconds]["Millis"] == int(seconds) * 1000
        settings = Settings.from_env(Stack(IntegrationTimeoutSeconds=seconds).environment())
        # A cold start plus the budget plus storing and settling never outlasts the gateway.
        total = COLD_START_ALLOWANCE_SECONDS + settings.upstream_budget_seconds + FINISH_ALLOWANCE_SECONDS
        assert total <= int(seconds)
    for function in (
        "GenerationsFunction",
        "EditsFunction",
        "VariationsFunction",
        "BalanceFunction",
        "UploadsFunction",
        "ModelsFunction",
    ):
        for event in functions()[function]["Properties"]["Events"].values():
            assert event["Properties"]["TimeoutInMillis"] == {
                "Fn::FindInMap": ["IntegrationTimeout", {"Ref": "IntegrationTimeoutSeconds"}, "Millis"]
            }


def test_optional_waf_domain_cors_tracing_and_reserved_concurrency():
    resources = template()["Resources"]
    assert resources["WebAclAssociation"]["Condition"] == "HasWebAcl"
    assert resources["ApiDomain"]["Condition"] == resources["ApiDomainMapping"]["Condition"] == "HasDomain"
    assert (
        Stack(CorsAllowOrigins="https://a.example").environment()["IMAGEGATE_CORS_ORIGINS"]
        == "https://a.example"
    )
    assert Stack(XRayTracing="Active").environment()["IMAGEGATE_TRACING"] == "on"
    assert Stack().environment()["IMAGEGATE_TRACING"] == "off"
    for function in ("GenerationsFunction", "EditsFunction", "VariationsFunction"):
        reserved = functions()[function]["Properties"]["ReservedConcurrentExecutions"]
        assert Stack(ReservedConcurrency="5").resolve(reserved) == "5"
        assert Stack().resolve(reserved) is not None and Stack().resolve(reserved) != "0"


# --- honest defaults, state, build ------------------------------------------------------------------------


def test_a_default_stack_never_lets_local_stand_in_for_real_models():
    env = {**Stack().environment(), "AWS_LAMBDA_FUNCTION_NAME": "imagegate-generations"}
    assert Settings.from_env(env).local_serves_all is False
    demo = {**Stack(DemoMode="true").environment(), "AWS_LAMBDA_FUNCTION_NAME": "imagegate-generations"}
    assert Settings.from_env(demo).demo_mode is True
    outputs = template()["Outputs"]
    assert outputs["DemoModeWarning"]["Condition"] == "IsDemo"
    assert outputs["NoUpstreamWarning"]["Condition"] == "HasNoUpstream"
    assert "not AI" in template()["Parameters"]["LocalPriceUsd"]["Description"]


def test_the_table_is_protected_retained_and_can_be_adopted():
    table = template()["Resources"]["Table"]
    assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"
    assert table["Properties"]["DeletionProtectionEnabled"] is True
    assert (
        Stack(ExistingTableName="imagegate-Table-OLD").environment()["IMAGEGATE_TABLE"]
        == "imagegate-Table-OLD"
    )
    assert Stack().environment()["IMAGEGATE_TABLE"] == "Table"  # the stack's own table


def test_the_layer_build_matches_the_template_architecture_and_runtime():
    functions_globals = template()["Globals"]["Function"]
    layer = template()["Resources"]["ImagegateLayer"]
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    makefile = (ROOT / "layers/imagegate/Makefile").read_text()
    arch = {"arm64": "aarch64", "x86_64": "x86_64"}[functions_globals["Architectures"][0]]
    assert re.search(rf"^ARCH \?= {arch}$", makefile, re.M)
    version = functions_globals["Runtime"].removeprefix("python")
    assert re.search(rf"^PYTHON_VERSION \?= {re.escape(version)}$", makefile, re.M)
    assert layer["Properties"]["CompatibleRuntimes"] == [functions_globals["Runtime"]]


@pytest.mark.parametrize(
    ("source", "action", "resource"),
    [
        ("s3://ops-bucket/imagegate/catalog.json", "s3:GetObject", "ops-bucket/imagegate/catalog.json"),
        ("ssm:/imagegate/catalog", "ssm:GetParameter", "/imagegate/catalog"),
    ],
)
def test_a_catalog_source_is_read_by_the_functions_that_route_and_nothing_else(source, action, resource):
    stack = Stack(CatalogSource=source)
    assert stack.environment()["IMAGEGATE_CATALOG"] == source
    policy = template()["Resources"]["CatalogReadPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert stack.resolve(policy["Action"]) == action
    # One object or one parameter: the resource is built from the source's own path.
    [_, values] = stack.resolve(policy["Resource"])["Fn::Sub"]
    assert [stack.resolve(v) for v in values.values()] == [resource]
    readers = {
        name
        for name, f in functions().items()
        if "CatalogReadPolicy" in str(stack.resolve(f["Properties"]["Policies"]))
    }
    assert all(action in actions(name, stack) for name in readers)
    assert readers == {
        "GenerationsFunction",
        "EditsFunction",
        "VariationsFunction",
        "ModelsFunction",
        "AccountFunction",  # the price book and models it lists come from the catalog
        "WorkerFunction",
        "SweepFunction",
        "RequestsFunction",
        "InvokeFunction",
    }
    # Without a source, nobody gets the grant.
    assert "CatalogReadPolicy" not in str(
        [p for f in functions().values() for p in Stack().resolve(f["Properties"].get("Policies", []))]
    )


def test_the_models_function_reads_keys_and_credentials_and_writes_nothing():
    allowed = actions("ModelsFunction", Stack(UpstreamCredentialsSecretArn="arn:aws:secretsmanager:x"))
    assert allowed == {"dynamodb:GetItem", "secretsmanager:GetSecretValue"}
    assert actions("ModelsFunction", Stack()) == {"dynamodb:GetItem"}


# --- webhook secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stack",
    [
        Stack(),
        Stack(WebhookSecretsKmsKeyArn=f"arn:aws:kms:us-east-1:123456789012:key/{'1234abcd-' * 3}12345678"),
    ],
    ids=["own key", "operator's key"],
)
def test_only_the_webhook_delivery_function_may_decrypt_webhook_secrets(stack):
    key = stack.resolve(functions()["WebhooksFunction"]["Properties"]["Environment"]["Variables"])[
        "IMAGEGATE_WEBHOOK_KEY_ID"
    ]
    assert key == stack.resolve(template()["Outputs"]["WebhookSecretsKeyArn"]["Value"])

    def grants(function: str) -> set[str]:
        found = set()
        for s in statements(function, stack):
            action = s.get("Action", [])
            listed = {action} if isinstance(action, str) else set(action)
            on = stack.resolve(s.get("Resource"))
            kms = any(a.startswith("kms:") for a in listed)
            if s.get("Effect") == "Allow" and on in (key, "*") and kms:
                found |= listed
        return found

    decrypting = {name for name in functions() if "kms:Decrypt" in grants(name)}
    assert decrypting == {"WebhooksFunction"}
    assert grants("WebhooksFunction") == {"kms:Decrypt"}  # it cannot make or re-encrypt secrets either
    [opening] = [s for s in statements("WebhooksFunction", stack) if s.get("Sid") == "OpenWebhookSecrets"]
    assert opening["Condition"] == {
        "ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "imagegate:account_id"}
    }
    for owner, statement in iam_statements(template()):  # no other identity policy names the key either
        assert "WebhookSecretsKey" not in json.dumps(statement) or owner == "WebhooksFunction"


def _matches(pattern, value):
    """EventBridge-style content filtering, the part the usage function's FilterCriteria uses."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(_matches(p, value.get(k)) for k, p in pattern.items())
    return any(_rule(rule, value) for rule in pattern)


def _rule(rule, value):
    if not isinstance(rule, dict):
        return value == rule
    if "exists" in rule:
        return rule["exists"] == (value is not None)
    return isinstance(value, str) and value.startswith(rule["prefix"])


def test_the_usage_functions_filter_lets_through_closing_requests_and_nothing_else():
    events = template()["Resources"]["UsageFunction"]["Properties"]["Events"]
    [only] = events["RequestsClosed"]["Properties"]["FilterCriteria"]["Filters"]
    pattern = json.loads(only["Pattern"])
    closing = json.loads((ROOT / "events" / "usage.json").read_text())["Records"][0]
    assert _matches(pattern, closing)
    for path, value in [
        (("eventName",), "INSERT"),
        (("dynamodb", "OldImage", "state", "S"), "settled"),
        (("dynamodb", "NewImage", "state", "S"), "reserved"),
        (("dynamodb", "Keys", "sk", "S"), "JOB#x"),
        (("dynamodb", "NewImage", "account_id"), None),  # written before requests left the account partition
    ]:
        other = copy.deepcopy(closing)
        *parents, last = path
        node = other
        for name in parents:
            node = node[name]
        node[last] = value
        assert not _matches(pattern, other), path
