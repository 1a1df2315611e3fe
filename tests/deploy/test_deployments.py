"""Deploys that reach production, checked on what CloudFormation receives: template.yaml packaged and run
through the SAM translator (tests/deploy/sam.py). Every change publishes new versions, rollouts go through
CodeDeploy with alarm rollback and an optional pre-traffic hook, and the least privilege holds: X-Ray only
with tracing on, the region's API Gateway logging role only when asked for, caps on the long functions."""

import json
import re
from functools import cache

import pytest

from .cfn import NO_VALUE, Stack, functions, template
from .sam import packaged, resources_of, transformed, versions

FINGERPRINT = "0123456789abcdef"
HOOK = "PreTrafficHookFunction"
XRAY_POLICY = "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess"


@cache
def cloudformation(layer_key: str = "layer-1", **parameters: str) -> dict:
    return transformed(packaged(layer_key=layer_key), **parameters)


# --- every deploy publishes what changed ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # `sam deploy` (no fingerprint): a layer whose content changed is a new S3 object.
        ({}, {"layer_key": "layer-2"}),
        # make deploy: the fingerprint covers the parameters, the template, the layer and the code.
        ({"DeployFingerprint": FINGERPRINT}, {"DeployFingerprint": "f" + FINGERPRINT[1:]}),
        (
            {"DeployFingerprint": FINGERPRINT},
            {"layer_key": "layer-2", "DeployFingerprint": "f" + FINGERPRINT[1:]},
        ),
    ],
    ids=["layer", "fingerprint", "layer-and-fingerprint"],
)
def test_every_function_publishes_a_new_version_when_what_it_runs_changes(before, after):
    old, new = versions(cloudformation(**before)), versions(cloudformation(**after))
    assert set(old) == set(new) == set(functions())
    assert [f for f in old if old[f] == new[f]] == []


def test_an_unchanged_deploy_publishes_nothing():
    for parameters in ({}, {"DeployFingerprint": FINGERPRINT}):
        assert versions(cloudformation(**parameters)) == versions(transformed(packaged(), **parameters))


def test_every_function_declares_what_globals_cannot_hold():
    # SAM's Globals take neither AutoPublishCodeSha256 nor (for cfn-lint) AutoPublishAliasAllProperties: a
    # function added without them would keep its old version after a deploy.
    for name, function in functions().items():
        props = function["Properties"]
        assert props.get("AutoPublishAliasAllProperties") is True, name
        assert props.get("AutoPublishCodeSha256") == {"Ref": "DeployFingerprint"}, name
    layer = template()["Resources"]["ImagegateLayer"]["Properties"]
    assert layer["PublishLambdaVersion"] is True
    assert template()["Globals"]["Function"]["AutoPublishAlias"] == "live"


def test_a_stack_deployed_without_the_fingerprint_says_so():
    outputs = template()["Outputs"]
    assert outputs["DeployFingerprintWarning"]["Condition"] == "HasNoDeployFingerprint"
    assert Stack().condition("HasNoDeployFingerprint")
    assert not Stack(DeployFingerprint=FINGERPRINT).condition("HasNoDeployFingerprint")
    pattern = template()["Parameters"]["DeployFingerprint"]["AllowedPattern"]
    assert re.fullmatch(pattern, FINGERPRINT) and re.fullmatch(pattern, "")


# --- safe rollouts ----------------------------------------------------------------------------------------


def deployment_groups(document: dict) -> dict[str, dict]:
    return {
        name.removesuffix("DeploymentGroup"): group["Properties"]
        for name, group in resources_of(document, "AWS::CodeDeploy::DeploymentGroup").items()
    }


def test_by_default_every_function_rolls_out_all_at_once_without_alarms_or_hook():
    document = cloudformation()
    groups = deployment_groups(document)
    assert set(groups) == set(functions()) - {HOOK}
    stack = Stack()
    for name, group in groups.items():
        assert group["DeploymentConfigName"]["Fn::Sub"][1] == {"ConfigName": "AllAtOnce"}, name
        # An alarm already going off must not block the deploy that fixes it.
        assert stack.resolve(group["AlarmConfiguration"]) == {}
        policy = document["Resources"][f"{name}Aliaslive"]["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
        assert "BeforeAllowTrafficHook" not in stack.resolve(policy)
    assert HOOK not in created(stack)


def test_a_canary_rolls_back_on_the_stacks_5xx_error_and_latency_alarms_after_the_hook():
    parameters = {"DeploymentStrategy": "Canary10Percent5Minutes", "PreTrafficCheck": "true"}
    document = cloudformation(**parameters)
    stack = Stack(**parameters)
    alarms = {
        "ApiServerErrorsAlarm",
        "FunctionErrorsAlarm",
        "JobRequestFunctionErrorsAlarm",
        "ApiLatencyAlarm",
    }
    for name, group in deployment_groups(document).items():
        assert group["DeploymentConfigName"]["Fn::Sub"][1] == {"ConfigName": "Canary10Percent5Minutes"}
        configuration = stack.resolve(group["AlarmConfiguration"])
        assert configuration["Enabled"] is True
        assert {a["Name"] for a in configuration["Alarms"]} == alarms  # their Refs, resolved
        assert "DEPLOYMENT_STOP_ON_ALARM" in group["AutoRollbackConfiguration"]["Events"]
        policy = document["Resources"][f"{name}Aliaslive"]["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
        assert stack.resolve(policy)["BeforeAllowTrafficHook"] == HOOK
    assert stack.condition(template()["Resources"][HOOK]["Condition"])


def test_the_latency_alarm_goes_off_before_requests_time_out():
    document = template()
    alarm = document["Resources"]["ApiLatencyAlarm"]["Properties"]
    assert alarm["Threshold"] == {
        "Fn::FindInMap": ["IntegrationTimeout", {"Ref": "IntegrationTimeoutSeconds"}, "SlowMillis"]
    }
    for row in document["Mappings"]["IntegrationTimeout"].values():
        assert row["SlowMillis"] == row["Millis"] * 9 // 10


def test_the_hook_may_report_and_invoke_the_new_versions_and_nothing_else():
    hook = template()["Resources"][HOOK]["Properties"]
    [statement_set] = hook["Policies"]
    allowed = {}
    for statement in statement_set["Statement"]:
        action = statement["Action"]
        for a in [action] if isinstance(action, str) else action:
            allowed[a] = statement["Resource"]
    assert set(allowed) == {
        "codedeploy:ListDeploymentTargets",
        "codedeploy:GetDeploymentTarget",
        "codedeploy:PutLifecycleEventHookExecutionStatus",
        "lambda:InvokeFunction",
    }
    assert (
        "deploymentgroup:${ServerlessDeploymentApplication}/*"
        in allowed["codedeploy:GetDeploymentTarget"]["Fn::Sub"]
    )
    others = set(functions()) - {HOOK}
    assert sorted(allowed["lambda:InvokeFunction"], key=str) == sorted(
        ({"Fn::Sub": f"${{{name}.Arn}}:*"} for name in others), key=str
    )


def test_the_hook_knows_every_functions_kind_and_outlasts_its_longest_probe():
    hook = template()["Resources"][HOOK]["Properties"]
    text = hook["Environment"]["Variables"]["IMAGEGATE_PROBES"]["Fn::Sub"]
    probes = json.loads(re.sub(r"\$\{(\w+)\}", r"\1", text))
    # A function's kind is its folder under functions/ (probe() knows each; the packaging test runs them).
    expected = {
        name: f["Properties"]["CodeUri"].strip("/").split("/")[-1]
        for name, f in functions().items()
        if name != HOOK
    }
    assert probes == expected
    # CodeDeploy's role invokes only hooks named so (AWSCodeDeployRoleForLambda).
    assert hook["FunctionName"] == {"Fn::Sub": "CodeDeployHook_${AWS::StackName}"}
    # The longest probe is a sweep run; the others answer in a second or two.
    assert hook["Timeout"] > functions()["SweepFunction"]["Properties"]["Timeout"]
    assert hook["DeploymentPreference"] == {"Enabled": False}


# --- least privilege that holds ---------------------------------------------------------------------------


def roles_with_xray(document: dict) -> list[str]:
    return sorted(
        name
        for name, role in resources_of(document, "AWS::IAM::Role").items()
        if XRAY_POLICY in role["Properties"].get("ManagedPolicyArns", [])
    )


def test_no_role_may_write_to_xray_unless_tracing_is_on():
    assert roles_with_xray(cloudformation()) == []
    traced = cloudformation(XRayTracing="Active")
    assert roles_with_xray(traced) == sorted(f"{name}Role" for name in functions())
    assert traced["Resources"]["GenerationsFunction"]["Properties"]["TracingConfig"] == {
        "Mode": {"Ref": "XRayTracing"}
    }
    assert "TracingConfig" not in cloudformation()["Resources"]["GenerationsFunction"]["Properties"]


def created(stack: Stack) -> set[str]:
    return {
        n
        for n, r in template()["Resources"].items()
        if "Condition" not in r or stack.condition(r["Condition"])
    }


@pytest.mark.parametrize(
    ("setting", "role", "account", "access_logs"),
    [
        ("", False, False, False),  # the default: the region's setting is left alone
        ("existing", False, False, True),
        ("create", True, True, True),
        ("arn:aws:iam::123456789012:role/apigw-logs", False, True, True),
    ],
)
def test_the_api_gateway_account_role_is_set_only_when_asked_for(setting, role, account, access_logs):
    stack = Stack(ApiGatewayCloudWatchRoleArn=setting)
    resources = created(stack)
    assert ("ApiGatewayCloudWatchRole" in resources) is role
    assert ("ApiGatewayAccount" in resources) is account
    assert ("ApiAccessLogGroup" in resources) is access_logs
    api = template()["Resources"]["RestApi"]
    assert "DependsOn" not in api  # a dependency on a resource that may not exist
    logs = stack.resolve(api["Properties"]["AccessLogSetting"])
    assert (logs is not NO_VALUE) is access_logs
    if account:
        # The stage waits for the account's role when the stack sets it.
        assert "ApiGatewayAccount" in logs["DestinationArn"]["Fn::Select"][1]  # its Ref, resolved
        arn = stack.resolve(template()["Resources"]["ApiGatewayAccount"]["Properties"]["CloudWatchRoleArn"])
        assert arn == (
            setting if setting.startswith("arn:") else {"Fn::GetAtt": ["ApiGatewayCloudWatchRole", "Arn"]}
        )


def test_the_functions_aws_services_drive_are_capped_by_parameters():
    resources = template()["Resources"]
    params = template()["Parameters"]
    for function, event, parameter in (
        ("WorkerFunction", "Jobs", "WorkerMaxConcurrency"),
        ("RequestsFunction", "Requests", "JobRequestsMaxConcurrency"),
    ):
        source = resources[function]["Properties"]["Events"][event]["Properties"]
        assert source["ScalingConfig"] == {"MaximumConcurrency": {"Ref": parameter}}
        # SQS's range for a mapping's maximum concurrency.
        assert (
            2
            <= params[parameter]["MinValue"]
            <= params[parameter]["Default"]
            <= params[parameter]["MaxValue"]
            <= 1000
        )
    reserved = resources["InvokeFunction"]["Properties"]["ReservedConcurrentExecutions"]
    assert Stack(InvokeReservedConcurrency="4").resolve(reserved) == "4"
    assert Stack().resolve(reserved) is not None and not Stack().condition("HasInvokeReservedConcurrency")


def test_the_outputs_bucket_logs_access_only_to_a_bucket_given():
    logging = template()["Resources"]["OutputsBucket"]["Properties"]["LoggingConfiguration"]
    assert Stack().resolve(logging) is NO_VALUE
    given = Stack(OutputsAccessLogBucket="imagegate-logs").resolve(logging)
    assert given["DestinationBucketName"] == "imagegate-logs"
    assert given["LogFilePrefix"] == {"Fn::Sub": "${AWS::StackName}/outputs/"}
