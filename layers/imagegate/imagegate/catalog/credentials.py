"""Upstream credentials, by name: read once per container (the caller keeps the result).

In AWS they come from a Secrets Manager secret or an SSM SecureString parameter holding one JSON object
of credential name -> value (`{"OPENAI_API_KEY": "...", "GEMINI_API_KEY": "..."}`); locally, from
environment variables of the same names prefixed `IMAGEGATE_` (IMAGEGATE_OPENAI_API_KEY). The prefix matters:
OPENAI_API_KEY in a developer's shell is the *client's* imagegate key, as the OpenAI SDK reads it, and must
never be mistaken for an upstream credential. Errors name the secret or parameter, never a value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagegate.aws import AWSClients
    from imagegate.config import Settings

# The credentials the packaged routes use; callers pass `routing.credential_names(routes)` so that an
# operator's own routes can name others.
DEFAULT_NAMES = ("OPENAI_API_KEY", "GEMINI_API_KEY")

ENV_PREFIX = "IMAGEGATE_"
_SHAPE = 'it must hold a JSON object of credential name to value, e.g. {"OPENAI_API_KEY": "..."}'


class CredentialsError(RuntimeError):
    """The configured credential store cannot be read or does not hold what it should."""


def load_credentials(
    settings: Settings,
    aws: AWSClients,
    env: Mapping[str, str] = os.environ,
    names: Iterable[str] = DEFAULT_NAMES,
) -> dict[str, str]:
    """Credential name -> value, empty values left out (an empty value configures nothing).

    From the environment only `IMAGEGATE_<name>` for the names in `names` is taken: never the whole
    environment, which holds the function's own AWS credentials.
    """
    if settings.upstream_secret_arn and settings.upstream_ssm_parameter:
        raise CredentialsError(
            "Set IMAGEGATE_UPSTREAM_SECRET_ARN or IMAGEGATE_UPSTREAM_SSM_PARAMETER, not both: "
            "it would be unclear which one holds the upstream credentials."
        )
    if settings.upstream_secret_arn:
        return read_secret(aws, settings.upstream_secret_arn)
    if settings.upstream_ssm_parameter:
        name = settings.upstream_ssm_parameter
        where = f"SSM parameter {name}"
        client = aws.client("ssm", _arn_region(name))
        response = _fetch(where, lambda: client.get_parameter(Name=name, WithDecryption=True))
        return _parse(response["Parameter"]["Value"], where)
    return {name: env[ENV_PREFIX + name] for name in names if env.get(ENV_PREFIX + name)}


def read_secret(aws: AWSClients, arn: str) -> dict[str, str]:
    """Credential name -> value from a Secrets Manager secret holding one JSON object of them."""
    where = f"Secrets Manager secret {arn}"
    client = aws.client("secretsmanager", _arn_region(arn))
    response = _fetch(where, lambda: client.get_secret_value(SecretId=arn))
    text = response.get("SecretString")
    if text is None:
        raise CredentialsError(f"{where} holds binary data; {_SHAPE}.")
    return _parse(text, where)


def _fetch(where: str, call: Callable[[], Any]) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except ClientError as exc:
        # AWS's error code says what is wrong (not found, access denied, KMS) and carries no secret.
        code = exc.response.get("Error", {}).get("Code", "ClientError")
        raise CredentialsError(f"Could not read {where}: {code}.") from exc
    except BotoCoreError as exc:
        raise CredentialsError(f"Could not read {where}: {type(exc).__name__}.") from exc


def _parse(text: str, where: str) -> dict[str, str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # The error is raised outside this handler: the decode error holds the secret text (`.doc`), and
        # chaining would keep it reachable from whatever logs the traceback.
        problem = f"is not valid JSON (line {exc.lineno}, column {exc.colno})"
    else:
        problem = "" if isinstance(data, dict) else "is not a JSON object"
    if problem:
        raise CredentialsError(f"{where} {problem}; {_SHAPE}.")
    not_text = sorted(key for key, value in data.items() if not isinstance(value, str))
    if not_text:
        raise CredentialsError(f"{where} has a non-string value for {', '.join(not_text)}; {_SHAPE}.")
    return {key: value for key, value in data.items() if value}


def _arn_region(reference: str) -> str | None:
    """The region in an ARN (`arn:aws:secretsmanager:eu-west-1:...`): a store may live outside the
    function's region. A plain name lives in the function's region."""
    parts = reference.split(":")
    if reference.startswith("arn:") and len(parts) > 3 and parts[3]:
        return parts[3]
    return None
