"""Upstream credentials from Secrets Manager, SSM or the environment; errors name the store, never a value."""

import json
import uuid

import pytest

from imagegate.catalog.credentials import CredentialsError, load_credentials
from imagegate.config import Settings

SECRET_VALUE = "sk-live-do-not-leak-4242"
STORED = {"OPENAI_API_KEY": SECRET_VALUE, "GEMINI_API_KEY": "gm-1", "UNUSED": ""}
ENV = {"IMAGEGATE_OPENAI_API_KEY": "sk-from-env"}


def name():
    return f"imagegate/{uuid.uuid4().hex[:12]}"


def secret(aws_clients, region=None, **value):
    return aws_clients.client("secretsmanager", region).create_secret(Name=name(), **value)["ARN"]


def parameter(aws_clients, value):
    param = "/" + name()
    aws_clients.client("ssm").put_parameter(Name=param, Value=value, Type="SecureString")
    return param


def test_a_secrets_manager_secret_holds_the_credentials(aws_clients):
    arn = secret(aws_clients, SecretString=json.dumps(STORED))
    # The secret wins over the environment; an empty value configures nothing.
    assert load_credentials(Settings(upstream_secret_arn=arn), aws_clients, env=ENV) == {
        "OPENAI_API_KEY": SECRET_VALUE,
        "GEMINI_API_KEY": "gm-1",
    }


def test_a_secret_in_another_region_is_read_there(aws_clients):
    arn = secret(aws_clients, region="eu-west-1", SecretString='{"GEMINI_API_KEY": "gm-eu"}')
    assert ":eu-west-1:" in arn
    assert load_credentials(Settings(upstream_secret_arn=arn), aws_clients, env={}) == {
        "GEMINI_API_KEY": "gm-eu"
    }


def test_an_ssm_securestring_holds_the_credentials(aws_clients):
    param = parameter(aws_clients, json.dumps(STORED))
    assert load_credentials(Settings(upstream_ssm_parameter=param), aws_clients, env=ENV) == {
        "OPENAI_API_KEY": SECRET_VALUE,
        "GEMINI_API_KEY": "gm-1",
    }


def test_the_environment_gives_only_the_named_credentials_under_the_imagegate_prefix():
    env = {
        "IMAGEGATE_OPENAI_API_KEY": "sk-env",
        "IMAGEGATE_GEMINI_API_KEY": "",
        "IMAGEGATE_EXAMPLE_KEY": "ex-1",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        # The OpenAI SDK's variable holds the client's own imagegate key in a developer's shell.
        "OPENAI_API_KEY": "sk-ig-the-clients-key",
        "EXAMPLE_KEY": "unprefixed",
    }
    assert load_credentials(Settings(), aws=None, env=env) == {"OPENAI_API_KEY": "sk-env"}
    names = {"OPENAI_API_KEY", "GEMINI_API_KEY", "EXAMPLE_KEY"}
    assert load_credentials(Settings(), aws=None, env=env, names=names) == {
        "OPENAI_API_KEY": "sk-env",
        "EXAMPLE_KEY": "ex-1",
    }


def assert_safe(error, store):
    message = str(error)
    assert store in message
    assert SECRET_VALUE not in message
    assert "sk-live" not in message
    # Nothing chained either: a logged traceback would show it.
    assert error.__cause__ is None
    assert error.__context__ is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"OPENAI_API_KEY": "' + SECRET_VALUE, "is not valid JSON (line 1, column 20)"),
        ("OPENAI_API_KEY=" + SECRET_VALUE, "is not valid JSON (line 1, column 1)"),
        (json.dumps([SECRET_VALUE]), "is not a JSON object"),
        (
            json.dumps({"OPENAI_API_KEY": {"key": SECRET_VALUE}}),
            "a non-string value for OPENAI_API_KEY",
        ),
    ],
)
def test_a_broken_secret_names_the_arn_but_not_the_value(aws_clients, text, problem):
    arn = secret(aws_clients, SecretString=text)
    with pytest.raises(CredentialsError) as info:
        load_credentials(Settings(upstream_secret_arn=arn), aws_clients, env=ENV)
    assert str(info.value).startswith(f"Secrets Manager secret {arn} ")
    assert problem in str(info.value)
    assert_safe(info.value, arn)


def test_a_broken_parameter_names_the_parameter_but_not_the_value(aws_clients):
    param = parameter(aws_clients, '{"OPENAI_API_KEY": ' + SECRET_VALUE + "}")
    with pytest.raises(CredentialsError) as info:
        load_credentials(Settings(upstream_ssm_parameter=param), aws_clients, env=ENV)
    assert str(info.value).startswith(f"SSM parameter {param} is not valid JSON")
    assert_safe(info.value, param)


def test_a_binary_secret_is_refused(aws_clients):
    arn = secret(aws_clients, SecretBinary=SECRET_VALUE.encode())
    with pytest.raises(CredentialsError) as info:
        load_credentials(Settings(upstream_secret_arn=arn), aws_clients, env=ENV)
    assert str(info.value).startswith(f"Secrets Manager secret {arn} holds binary data")
    assert_safe(info.value, arn)


def test_a_missing_secret_or_parameter_is_a_clear_error(aws_clients):
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:imagegate/absent-AbCdEf"
    with pytest.raises(CredentialsError) as info:
        load_credentials(Settings(upstream_secret_arn=arn), aws_clients, env=ENV)
    assert str(info.value) == f"Could not read Secrets Manager secret {arn}: ResourceNotFoundException."

    with pytest.raises(CredentialsError) as info:
        load_credentials(Settings(upstream_ssm_parameter="/imagegate/absent"), aws_clients, env=ENV)
    assert str(info.value) == "Could not read SSM parameter /imagegate/absent: ParameterNotFound."


def test_two_stores_at_once_are_refused(aws_clients):
    with pytest.raises(CredentialsError, match="not both"):
        load_credentials(Settings(upstream_secret_arn="a", upstream_ssm_parameter="b"), aws_clients, env=ENV)


def test_the_stripe_keys_come_from_their_own_secret_when_one_is_configured(aws_clients):
    from aws_lambda_powertools.logging import Logger

    from imagegate.service import Service

    stripe = {"STRIPE_SECRET_KEY": "sk_test_own", "STRIPE_WEBHOOK_SECRET": "whsec_own", "OTHER": "x"}
    upstreams = secret(aws_clients, SecretString=json.dumps({**STORED, "STRIPE_SECRET_KEY": "sk_test_old"}))
    own = secret(aws_clients, SecretString=json.dumps(stripe))

    def keys(**settings):
        service = Service(Settings(upstream_secret_arn=upstreams, **settings), aws_clients, Logger("stripe"))
        return service.topups.credentials()

    assert keys(stripe_secret_arn=own) == {
        "STRIPE_SECRET_KEY": "sk_test_own",
        "STRIPE_WEBHOOK_SECRET": "whsec_own",
    }
    assert keys() == {"STRIPE_SECRET_KEY": "sk_test_old"}  # none of its own: the upstream secret, as before
    assert Settings.from_env({"IMAGEGATE_STRIPE_SECRET_ARN": own}).stripe_secret_arn == own
