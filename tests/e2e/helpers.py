"""Helpers for the end-to-end suite: images made in code, the OpenAPI spec as a JSON Schema validator, and the
code blocks of the README and the docs pages."""

import copy
import io
import re
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"

# CI clones the repo with ../shared beside it; a bare checkout may not have it.
SPEC_PATH = REPO.parent / "shared" / "reference" / "openai-images.openapi.yaml"
SPEC_MISSING = (
    f"OpenAPI spec not found at {SPEC_PATH} (../shared is not beside the repo): "
    "responses are not validated against the spec's ImagesResponse and ErrorResponse schemas"
)

# IMAGEGATE_MAX_BODY_BYTES of the second app, so that a 413 needs only a small upload.
SMALL_BODY_LIMIT = 64 * 1024


def png_bytes(width: int, height: int, mode: str = "RGBA", colour: tuple = (10, 200, 30, 255)) -> bytes:
    return encoded(Image.new(mode, (width, height), colour[: len(mode)]), "PNG")


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def load_spec() -> dict | None:
    return yaml.safe_load(SPEC_PATH.read_text()) if SPEC_PATH.is_file() else None


class SpecValidator:
    """Validates bodies against `#/components/schemas/<name>` of the spec, resolving every `$ref` in it."""

    def __init__(self, spec: dict | None) -> None:
        self.spec = spec

    def __call__(self, body: Any, schema_name: str = "ImagesResponse", drop: tuple[str, ...] = ()) -> None:
        """Assert `body` is valid; `drop` names top-level properties left out of the schema first."""
        if self.spec is None:
            return  # test_openapi_spec_is_present reports this as a skip
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        document = self.spec
        if drop:
            document = copy.deepcopy(self.spec)
            properties = document["components"]["schemas"][schema_name]["properties"]
            for name in drop:
                del properties[name]
        uri = "urn:openai-images-openapi"
        registry = Registry().with_resource(
            uri, Resource.from_contents(document, default_specification=DRAFT202012)
        )
        validator = Draft202012Validator(
            {"$ref": f"{uri}#/components/schemas/{schema_name}"}, registry=registry
        )
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, f"{schema_name} violations: " + "; ".join(
            f"{list(e.absolute_path)}: {e.message}" for e in errors
        )


def code_blocks(page: Path, language: str, marker: str = "") -> list[str]:
    """The fenced ```<language> blocks of a markdown page that contain `marker`, in order. A block indented
    inside a list item comes back dedented, as it would be typed."""
    found = re.findall(rf"^( *)```{language}\n(.*?)^\1```", page.read_text(), flags=re.S | re.M)
    blocks = [re.sub(rf"^{indent}", "", body, flags=re.M) for indent, body in found]
    return [b for b in blocks if marker in b]
