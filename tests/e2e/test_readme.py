"""The README's examples, run as a new user would run them against `make serve`."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

README = Path(__file__).parents[2] / "README.md"
README_BASE_URL = "http://127.0.0.1:8000"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # create_variation, as the SDK marks it
def test_readme_python_example_runs_unchanged(stack, new_user, monkeypatch, tmp_path, capsys):
    user = new_user(stack)
    [example] = [b for b in _blocks("python") if "OpenAI()" in b]
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
    # dall-e-2 512x512, gpt-image-1.5 low 1024x1024, the edit at quality auto (medium) 1024x1024, and two
    # dall-e-2 256x256 variations, at the published per-image prices.
    assert before - user.balance() == 18_000 + 9_000 + 34_000 + 2 * 16_000


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples_run(stack, new_user, tmp_path):
    user = new_user(stack)
    Image.new("RGBA", (64, 64), (10, 120, 200, 255)).save(tmp_path / "lighthouse.png")
    blocks = [b for b in _blocks("sh") if "curl -s" in b]
    commands = [c for b in blocks for c in b.replace("\\\n", " ").splitlines() if c.startswith("curl")]
    assert len(commands) == 4
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", command.replace(README_BASE_URL, stack.base_url)],
            cwd=tmp_path,
            env={"OPENAI_API_KEY": user.key, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        expected = '"object":"balance"' if "/v1/balance" in command else '"data":[{'
        assert expected in result.stdout, result.stdout[:300]
