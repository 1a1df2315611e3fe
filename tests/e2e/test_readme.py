"""The examples of the README and the docs pages, run as a new user would run them against `make serve`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from .helpers import DOCS, README, code_blocks

README_BASE_URL = "http://127.0.0.1:8000"
INPUTS = DOCS / "inputs.md"  # large inputs: the upload examples


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # create_variation, as the SDK marks it
def test_readme_python_example_runs_unchanged(stack, new_user, monkeypatch, tmp_path, capsys):
    user = new_user(stack)
    [example] = code_blocks(README, "python", "OpenAI()")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{stack.base_url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", user.key)
    monkeypatch.chdir(tmp_path)
    before = user.balance()

    exec(compile(example, "README.md", "exec"), {})

    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("http://127.0.0.1:") and "X-Amz-Expires=3600" in out[0]  # presigned S3 URL
    assert out[-1] == "2 variations"
    with Image.open(tmp_path / "lighthouse.png") as img:
        assert img.size == (1024, 1024)
    # dall-e-2 512x512, gpt-image-2 low 1024x1024, the edit at quality auto (medium) 1024x1024, and two
    # dall-e-2 256x256 variations, at the published per-image prices.
    assert before - user.balance() == 18_000 + 6_000 + 53_000 + 2 * 16_000


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_blocks_run_on_their_own_and_follow_port(stack, new_user, tmp_path):
    """Each curl block runs as a whole script in an empty directory (the edit makes its own input image),
    reaching the server only through ${PORT:-8000}: the README's three, then the upload of docs/inputs.md."""
    user = new_user(stack)
    port = urlsplit(stack.base_url).port
    readme = code_blocks(README, "sh", "curl -s")
    assert len(readme) == 3
    blocks = [*readme, *code_blocks(INPUTS, "sh", "/v1/images/uploads")]
    assert len(blocks) == 4
    assert not [b for b in blocks if README_BASE_URL in b]  # every URL follows PORT
    tools = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # python3 decodes b64_json
    outputs = []
    for i, block in enumerate(blocks):
        workdir = tmp_path / f"block{i}"
        workdir.mkdir()
        result = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + block],
            cwd=workdir,
            env={"OPENAI_API_KEY": user.key, "PATH": tools, "PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-1000:]
        outputs.append(result.stdout)
    assert '"data":[{' in outputs[0]
    with Image.open(tmp_path / "block1" / "lighthouse.png") as img:
        assert img.size == (1024, 1024)
    assert '"data":[{' in outputs[1]  # the edit
    assert '"object":"balance"' in outputs[2]
    # Large inputs: uploaded to the emulated S3 by the presigned POST, then edited by file id.
    [upload_key] = stack.objects_under(f"uploads/{user.account_id}/")
    assert upload_key.endswith(json.loads((tmp_path / "block3" / "upload.json").read_text())["id"])
    assert '"data":[{' in outputs[3]


def test_readme_upload_example_runs_with_the_client_from_above(stack, new_user, monkeypatch, tmp_path):
    user = new_user(stack)
    [example] = code_blocks(INPUTS, "python", "/images/uploads")
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (256, 256), (20, 90, 160)).save(tmp_path / "photo.png")
    before = user.balance()
    scope = {"client": user.client}

    exec(compile(example, "docs/inputs.md", "exec"), scope)

    assert len(scope["edited"].data) == 1
    assert stack.objects_under(f"uploads/{user.account_id}/") == [scope["upload"]["upload_fields"]["key"]]
    assert before - user.balance() == 53_000  # gpt-image-2, quality auto (medium), auto size: square
