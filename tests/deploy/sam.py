"""template.yaml through the SAM translator (aws-sam-translator, the library `sam` and AWS's
AWS::Serverless-2016-10-31 transform run), offline: as `sam package` leaves it (code and layer in S3) and
transformed with given parameter values, the way CloudFormation transforms it at every deploy."""

from __future__ import annotations

import copy
import os
from typing import Any
from unittest import mock

from samtranslator.translator.transform import transform

from .cfn import template

BUCKET = "imagegate-artifacts"
# The region the transform runs in (it asks boto3 for it; no AWS call is made).
REGION = "us-east-1"


class NoManagedPolicies:
    """The managed-policy loader the transform asks for AWS managed policies named in Policies: the template
    names none (its policies are inline or its own), so nothing is looked up in IAM."""

    def load(self) -> dict[str, str]:
        return {}


def packaged(document: dict[str, Any] | None = None, layer_key: str = "layer-1") -> dict[str, Any]:
    """The template as `sam package` uploads it: every CodeUri and the layer's ContentUri an S3 object
    (`layer_key` stands for the layer's content: sam package names objects by their hash)."""
    document = copy.deepcopy(template() if document is None else document)
    for name, resource in document["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            props["CodeUri"] = f"s3://{BUCKET}/{name}"
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = f"s3://{BUCKET}/{layer_key}"
    return document


def transformed(document: dict[str, Any], **parameters: str) -> dict[str, Any]:
    """The CloudFormation template the transform makes of a packaged SAM template, for these parameter
    values (the others at their defaults, as the transform receives them)."""
    with mock.patch.dict(os.environ, {"AWS_DEFAULT_REGION": REGION}):
        return transform(copy.deepcopy(document), dict(parameters), NoManagedPolicies())


def resources_of(document: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in document["Resources"].items() if r["Type"] == kind}


def versions(document: dict[str, Any]) -> dict[str, str]:
    """Each function's AWS::Lambda::Version logical id, by function."""
    found = {}
    for name, version in resources_of(document, "AWS::Lambda::Version").items():
        function = version["Properties"]["FunctionName"]["Ref"]
        assert function not in found, f"{function} has two versions"
        found[function] = name
    return found
