"""`sam deploy --guided` with Enter at every prompt, offline: it must get through all its questions and stop
only where AWS credentials are needed (its first AWS call, for the managed artifacts bucket).

    python scripts/guided_deploy.py [--sam PATH]

Without --sam it installs the pinned SAM CLI into build/sam-cli/ (a venv of its own; PyPI only, once).
The run happens in a scratch copy of template.yaml and samconfig.toml (guided saves its answers there),
with no AWS credentials, configuration or instance metadata. It prints the transcript's tail and exits 0
when the questions were all answered and the run stopped for credentials, 1 otherwise (a question Enter
cannot answer, such as "<Fn> has no authentication. Is this okay? [y/N]", ends it with "Security
Constraints Not Satisfied!"). Not part of make test: the SAM CLI is large.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAM_CLI_VERSION = "1.170.0"
VENV = ROOT / "build" / "sam-cli"
REACHED = "Looking for resources needed for deployment"
NO_CREDENTIALS = re.compile(r"credentials|NoCredentials|Unable to locate", re.I)
PROMPT = re.compile(r"\t(?:\x1b\[1m)?([^\t\n]*?)(?:\x1b\[0m)? \[([^\]\n]*)\]: ")


def sam_cli() -> Path:
    sam = VENV / "bin" / "sam"
    if not sam.exists():
        print(f"==> installing aws-sam-cli {SAM_CLI_VERSION} into {VENV} (once)", flush=True)
        venv.create(VENV, with_pip=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, f"aws-sam-cli=={SAM_CLI_VERSION}"], check=True)
    return sam


def offline_env(scratch: Path) -> dict[str, str]:
    """No credentials from anywhere: the first AWS call fails for want of them, not for a network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAM_"))}
    empty = scratch / "aws-empty"
    empty.write_text("")
    env.update(
        AWS_CONFIG_FILE=str(empty),
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
        SAM_CLI_TELEMETRY="0",
        HOME=str(scratch),  # no ~/.aws, no SAM CLI metadata of the user's
    )
    return env


def run(sam: Path) -> tuple[int, str]:
    with tempfile.TemporaryDirectory(prefix="guided-") as tmp:
        scratch = Path(tmp)
        for name in ("template.yaml", "samconfig.toml"):
            shutil.copy(ROOT / name, scratch / name)
        for name in ("functions", "layers"):
            (scratch / name).symlink_to(ROOT / name)
        result = subprocess.run(
            [str(sam), "deploy", "--guided"],
            cwd=scratch,
            env=offline_env(scratch),
            input="\n" * 300,  # Enter, at every prompt there is
            capture_output=True,
            text=True,
            timeout=600,
        )
    return result.returncode, result.stdout + result.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", type=Path, help="a SAM CLI to use instead of the pinned one")
    sam = parser.parse_args().sam or sam_cli()
    version = subprocess.run([str(sam), "--version"], capture_output=True, text=True, check=True).stdout
    version = version.strip()
    status, transcript = run(sam)
    prompts = PROMPT.findall(transcript)
    print("\n".join(transcript.splitlines()[-25:]))
    print(f"\n==> {version}: {len(prompts)} prompts answered with Enter, exit status {status}")
    for question, default in prompts:
        if "Is this okay" in question:
            print(f"    unanswerable by Enter: {question} [{default}]")
    if REACHED in transcript and NO_CREDENTIALS.search(transcript.split(REACHED, 1)[1]):
        print("==> passed: every question answered; stopped where AWS credentials are needed")
        return 0
    print("==> failed: the guided deploy stopped before the credentials step")
    return 1


if __name__ == "__main__":
    sys.exit(main())
