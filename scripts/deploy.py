"""`make deploy` and `make deploy-check`: deploys whose parameter changes reach the live alias, and a check
that tells when they did not.

    python scripts/deploy.py deploy [Key=Value ...] [-- <more sam deploy options>]
    python scripts/deploy.py check

SAM names each function's version after a hash of the function as the template states it, with parameter
references unresolved (serverless-application-model #3820): a deploy that changes only a parameter
(credentials, DemoMode, a timeout, memory) updates each function but publishes no version, and `live`
keeps the old settings. `deploy` computes the parameter values the deploy will have (the template's
defaults, under the stack's current values, under samconfig.toml's parameter_overrides, under the
Key=Value arguments), a fingerprint of them, the template, the layer and the functions' code, and runs
`sam deploy` with those values and DeployFingerprint=<fingerprint>, which every function names in
AutoPublishCodeSha256: whatever changed, every version is published anew; nothing changed, nothing is.

`check` compares each function's live alias with the function itself (what its last deploy declared):
after a plain `sam deploy` that changed a parameter they differ, and it says which function and what.
It exits 1 when one is stale, 0 otherwise. Both read the stack name and region from samconfig.toml
(stack_name, region; else AWS_REGION / the AWS configuration), and need AWS credentials. $SAM names the
SAM CLI (default: sam).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FINGERPRINT = "DeployFingerprint"
# What a deploy runs, besides the parameters: the template, the layer (with its requirements) and the
# functions' folders.
SOURCES = ("template.yaml", "layers/imagegate", "functions")
# Values earlier releases of the template took, as this one spells them.
RENAMED_VALUES = {"XRayTracing": {"false": "Disabled", "true": "Active"}}
# In a stack of an earlier release (no DeployFingerprint yet), an empty ApiGatewayCloudWatchRoleArn made the
# stack create and set the API Gateway logging role; empty now means no access logs, whose log group would
# go with its logs. Such a stack keeps them through the role it set (retained), as `existing`.
LOGGING_ROLE = "ApiGatewayCloudWatchRoleArn"
# A function's settings as its live version has them and as the function (what the stack last declared)
# has them; each differs only if the version is stale.
COMPARED = (
    "CodeSha256",
    "Layers",
    "Environment",
    "MemorySize",
    "Timeout",
    "Runtime",
    "Handler",
    "Architectures",
    "TracingConfig",
    "EphemeralStorage",
    "SnapStart",
)
# SAM CLI's reading of `--parameter-overrides Key=Value` (samcli/cli/types.py): a value quoted with ' or ",
# with backslash escapes, or unquoted up to the next space.
_VALUE = r"""("(?:\\.|[^"\\]+)*"|'(?:\\.|[^'\\]+)*'|(?:\\.|[^ "\\]+)+)"""
_OVERRIDE = re.compile(r"(?: )([A-Za-z0-9\"]+)=" + _VALUE)


def parse_overrides(texts: Iterable[str]) -> dict[str, str]:
    """Key=Value strings as SAM CLI reads them; later ones win."""
    found: dict[str, str] = {}
    for text in texts:
        for key, value in _OVERRIDE.findall(" " + text.strip()):
            if value[:1] in ("'", '"') and value[-1:] == value[:1]:
                value = value[1:-1]
            found[key] = value.replace("\\ ", " ").replace('\\"', '"').replace("\\'", "'")
    return found


def quoted(key: str, value: str) -> str:
    """`Key="value"` that SAM CLI reads back as `value` (which must hold no backslash: SAM keeps them)."""
    if "\\" in value:
        raise SystemExit(f"{key}: a backslash in a parameter value does not survive sam deploy's parsing")
    return f'{key}="{value.replace(chr(34), chr(92) + chr(34))}"'


def template_parameters(path: Path = ROOT / "template.yaml") -> dict[str, str]:
    """Each parameter of the template with its default ("" when it has none)."""
    from cfnlint.decode import decode

    document, matches = decode(str(path))
    if matches:
        raise SystemExit(f"{path}: {matches[0]}")
    return {name: str(p.get("Default", "")) for name, p in document["Parameters"].items()}


def samconfig(path: Path = ROOT / "samconfig.toml", env: str = "default") -> dict[str, Any]:
    """samconfig.toml's deploy parameters (global ones under them), for one config environment."""
    config = tomllib.loads(path.read_text()) if path.exists() else {}
    section = config.get(env, {})
    return {
        **section.get("global", {}).get("parameters", {}),
        **section.get("deploy", {}).get("parameters", {}),
    }


def _override_texts(value: str | Sequence[str] | None) -> list[str]:
    return [] if not value else [value] if isinstance(value, str) else list(value)


def effective_parameters(
    defaults: Mapping[str, str],
    deployed: Mapping[str, str],
    configured: Mapping[str, str],
    given: Mapping[str, str],
) -> dict[str, str]:
    """The values the deploy will have: the template's defaults, under the stack's current values (which
    sam deploy keeps for a parameter it is not given), under samconfig.toml's, under the given ones; values
    of earlier releases translated; the fingerprint left out."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise SystemExit(f"not parameters of template.yaml: {', '.join(sorted(unknown))}")
    values = {}
    for name, default in defaults.items():
        if name == FINGERPRINT:
            continue
        value = given.get(name, configured.get(name, deployed.get(name, default)))
        values[name] = RENAMED_VALUES.get(name, {}).get(value, value)
    earlier_release = bool(deployed) and FINGERPRINT not in deployed
    if earlier_release and deployed.get(LOGGING_ROLE) == "" and LOGGING_ROLE not in {**configured, **given}:
        values[LOGGING_ROLE] = "existing"
    return values


def source_files(root: Path = ROOT) -> list[Path]:
    files = []
    for source in SOURCES:
        path = root / source
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [p for p in found if "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return files


def fingerprint(parameters: Mapping[str, str], root: Path = ROOT) -> str:
    """16 hex digits of a SHA-256 over the parameter values and every source file (path and content). SAM
    uses the first 10 as each version's name, so any change renames, and publishes, all of them."""
    digest = hashlib.sha256()
    for name in sorted(parameters):
        digest.update(f"{name}={parameters[name]}\n".encode())
    for path in source_files(root):
        digest.update(f"{path.relative_to(root).as_posix()}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def stack_parameters(cloudformation: Any, stack: str) -> dict[str, str] | None:
    """The deployed stack's parameter values; None when there is no such stack."""
    from botocore.exceptions import ClientError

    try:
        [found] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in found.get("Parameters", [])}


def stale(lambda_: Any, functions: Iterable[str], alias: str = "live") -> list[str]:
    """One line per function whose live alias runs other settings than the function declares (names of
    the environment variables only: their values may be confidential)."""
    found = []
    for function in functions:
        declared = lambda_.get_function_configuration(FunctionName=function)
        live = lambda_.get_function_configuration(FunctionName=function, Qualifier=alias)
        differs = [key for key in COMPARED if declared.get(key) != live.get(key)]
        if "Environment" in differs:
            before = live.get("Environment", {}).get("Variables", {})
            after = declared.get("Environment", {}).get("Variables", {})
            names = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            differs[differs.index("Environment")] = f"Environment ({', '.join(names)})"
        if differs:
            found.append(
                f"{function}: {alias} runs version {live['Version']}, which differs in {', '.join(differs)}"
            )
    return found


def stack_functions(cloudformation: Any, stack: str) -> list[str]:
    paginator = cloudformation.get_paginator("list_stack_resources")
    return sorted(
        r["PhysicalResourceId"]
        for page in paginator.paginate(StackName=stack)
        for r in page["StackResourceSummaries"]
        if r["ResourceType"] == "AWS::Lambda::Function" and r.get("PhysicalResourceId")
    )


def _session(config: Mapping[str, Any]) -> Any:
    import boto3

    return boto3.session.Session(profile_name=config.get("profile"), region_name=config.get("region"))


def check(config: Mapping[str, Any]) -> int:
    session = _session(config)
    stack = config.get("stack_name", "imagegate")
    cloudformation = session.client("cloudformation")
    deployed = stack_parameters(cloudformation, stack)
    if deployed is None:
        print(f"no stack {stack} in {session.region_name}")
        return 1
    problems = stale(session.client("lambda"), stack_functions(cloudformation, stack))
    for line in problems:
        print(f"stale {line}")
    if problems:
        print("The live aliases do not run what the stack declares: run make deploy (docs/upgrading.md).")
        return 1
    print(f"ok: every function's live alias runs what {stack} declares")
    return 0


def deploy(config: Mapping[str, Any], arguments: Sequence[str]) -> int:
    given_texts = [a for a in arguments if "=" in a and not a.startswith("-")]
    sam_options = [a for a in arguments if a not in given_texts]
    defaults = template_parameters()
    session = _session(config)
    stack = config.get("stack_name", "imagegate")
    deployed = stack_parameters(session.client("cloudformation"), stack) or {}
    configured_texts = _override_texts(config.get("parameter_overrides"))
    values = effective_parameters(
        defaults, deployed, parse_overrides(configured_texts), parse_overrides(given_texts)
    )
    digest = fingerprint(values)
    print(f"==> {stack}: fingerprint {digest} (stack: {deployed.get(FINGERPRINT) or 'none'})")
    # Every value the fingerprint covers is given, so nothing is left to sam deploy's previous values.
    overrides = [quoted(name, value) for name, value in values.items()] + [f"{FINGERPRINT}={digest}"]
    command = [os.environ.get("SAM", "sam"), "deploy", *sam_options, "--parameter-overrides", *overrides]
    status = subprocess.run(command, cwd=ROOT, check=False).returncode
    if status != 0:
        return status
    return check(config)


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("deploy", "check"):
        print(__doc__)
        return 2
    config = samconfig()
    return check(config) if argv[0] == "check" else deploy(config, [a for a in argv[1:] if a != "--"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
