"""scripts/deploy.py (make deploy, make deploy-check): the values a deploy will have, their fingerprint,
the sam deploy it runs, and the check that tells a stale live alias."""

import importlib.util
import re
import shutil
import sys

import pytest

from .cfn import ROOT, template


@pytest.fixture(scope="module")
def deploy():
    spec = importlib.util.spec_from_file_location("deploy_script", ROOT / "scripts" / "deploy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_script"] = module
    spec.loader.exec_module(module)
    return module


def test_overrides_are_read_as_sam_cli_reads_them_and_written_back_alike(deploy):
    texts = ['DemoMode=true Prices="{\\"markup_percent\\": 20}"', "LogLevel='DEBUG' DemoMode=false"]
    assert deploy.parse_overrides(texts) == {
        "DemoMode": "false",  # the later one
        "Prices": '{"markup_percent": 20}',
        "LogLevel": "DEBUG",
    }
    for value in ("", "a b", '{"gpt-image-1": [{"provider": "openai"}]}', "it's"):
        assert deploy.parse_overrides([deploy.quoted("Routes", value)]) == {"Routes": value}
    with pytest.raises(SystemExit, match="backslash"):
        deploy.quoted("Routes", "a\\b")


def test_the_deploy_has_the_given_then_configured_then_deployed_then_default_values(deploy):
    defaults = deploy.template_parameters()
    assert set(defaults) == set(template()["Parameters"])
    values = deploy.effective_parameters(
        defaults,
        deployed={
            "LogLevel": "WARNING",
            "DemoMode": "true",
            "XRayTracing": "true",
            "ApiGatewayCloudWatchRoleArn": "",
        },
        configured={"DemoMode": "false", "LocalPriceUsd": "0.01"},
        given={"LocalPriceUsd": "0.02"},
    )
    assert (values["LogLevel"], values["DemoMode"], values["LocalPriceUsd"]) == ("WARNING", "false", "0.02")
    assert values["XRayTracing"] == "Active"  # an earlier release's true, as this template spells it
    assert values["FunctionMemorySize"] == defaults["FunctionMemorySize"]
    assert "DeployFingerprint" not in values
    # A stack of an earlier release, which set the logging role itself, keeps its access logs.
    assert values["ApiGatewayCloudWatchRoleArn"] == "existing"
    current = deploy.effective_parameters(
        defaults, {"DeployFingerprint": "", "ApiGatewayCloudWatchRoleArn": ""}, {}, {}
    )
    assert current["ApiGatewayCloudWatchRoleArn"] == ""
    with pytest.raises(SystemExit, match="DemoMod"):
        deploy.effective_parameters(defaults, {}, {}, {"DemoMod": "true"})


def test_the_fingerprint_changes_with_any_parameter_or_source_and_only_then(deploy, tmp_path):
    for source in deploy.SOURCES:
        copy = shutil.copy if (ROOT / source).is_file() else shutil.copytree
        (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
        copy(ROOT / source, tmp_path / source)
    values = deploy.effective_parameters(deploy.template_parameters(), {}, {}, {})
    first = deploy.fingerprint(values, tmp_path)
    assert re.fullmatch(template()["Parameters"]["DeployFingerprint"]["AllowedPattern"], first)
    assert deploy.fingerprint(dict(values), tmp_path) == first
    assert deploy.fingerprint({**values, "DemoMode": "true"}, tmp_path) != first
    layer_file = tmp_path / "layers/imagegate/imagegate/config.py"
    layer_file.write_text(layer_file.read_text() + "\n# changed\n")
    changed = deploy.fingerprint(values, tmp_path)
    # SAM names versions after the first 10 characters alone.
    assert changed[:10] != first[:10]


class FakeLambda:
    def __init__(self, configurations: dict) -> None:
        self.configurations = configurations

    def get_function_configuration(self, FunctionName: str, Qualifier: str = "$LATEST") -> dict:
        return self.configurations[FunctionName, Qualifier]


def configuration(version: str, **variables: str) -> dict:
    return {
        "Version": version,
        "CodeSha256": "abc",
        "Layers": [{"Arn": "arn:aws:lambda:us-east-1:123456789012:layer:imagegate:4"}],
        "MemorySize": 1024,
        "Environment": {"Variables": {"IMAGEGATE_DEMO_MODE": "off", **variables}},
        "RevisionId": version,
    }


def test_the_check_names_each_stale_function_and_what_differs_never_values(deploy):
    current = {("fresh", "$LATEST"): configuration("$LATEST"), ("fresh", "live"): configuration("3")}
    stale = {
        ("stale", "$LATEST"): configuration("$LATEST", IMAGEGATE_UPSTREAM_SECRET_ARN="arn:secret"),
        ("stale", "live"): configuration("7"),
    }
    found = deploy.stale(FakeLambda({**current, **stale}), ["fresh", "stale"])
    assert found == [
        "stale: live runs version 7, which differs in Environment (IMAGEGATE_UPSTREAM_SECRET_ARN)"
    ]
    assert "arn:secret" not in found[0]


def test_make_deploy_gives_sam_every_value_and_the_fingerprint_then_checks(deploy, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(deploy.subprocess, "run", lambda command, **_: ran.append(command) or Done())
    monkeypatch.setattr(deploy, "stack_parameters", lambda cloudformation, stack: {"DemoMode": "true"})
    monkeypatch.setattr(deploy, "check", lambda config: 0)
    monkeypatch.setattr(deploy, "_session", lambda config: Session())
    config = {"stack_name": "imagegate", "parameter_overrides": "LogLevel=DEBUG"}
    assert deploy.deploy(config, ["--no-confirm-changeset", "LocalPriceUsd=0.01"]) == 0
    [command] = ran
    assert command[:3] == ["sam", "deploy", "--no-confirm-changeset"]
    overrides = deploy.parse_overrides(command[command.index("--parameter-overrides") + 1 :])
    assert set(overrides) == set(template()["Parameters"])
    assert (overrides["DemoMode"], overrides["LogLevel"], overrides["LocalPriceUsd"]) == (
        "true",
        "DEBUG",
        "0.01",
    )
    values = {k: v for k, v in overrides.items() if k != "DeployFingerprint"}
    assert overrides["DeployFingerprint"] == deploy.fingerprint(values)


class Done:
    returncode = 0


class Session:
    region_name = "us-east-1"

    def client(self, service: str) -> object:
        return object()
