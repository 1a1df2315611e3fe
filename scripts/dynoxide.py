"""Install Dynoxide, the DynamoDB emulator `make serve` runs, pinned and verified: `make install` calls it.

    python scripts/dynoxide.py .venv/bin/dynoxide

Dynoxide (https://github.com/nubo-db/dynoxide) is a DynamoDB emulator in Rust on SQLite, checked against real
DynamoDB by a public conformance suite. moto's DynamoDB costs ~60 ms of CPU per imagegate request, one request
at a time; Dynoxide serves the same requests in a few milliseconds each, concurrently, with transactions that
stay atomic and isolated (tests/e2e/test_devserver_concurrency.py proves it through `make serve`).

The binary comes from its npm package (a package registry, not a release page): this version only, and only if
the tarball matches the integrity npm publishes for it, so no other bytes are ever run. Only the linux x86_64
build is pinned. On any other platform, or if the download fails, this prints one line and exits 0: `make
serve` then keeps moto's DynamoDB (devserver.py), and a later `make install` tries the download again.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import platform
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "1.2.1"
TARBALL = f"https://registry.npmjs.org/@dynoxide/linux-x64/-/linux-x64-{VERSION}.tgz"
# npm's `dist.integrity` for that tarball (`npm view @dynoxide/linux-x64@1.2.1 dist.integrity`).
INTEGRITY = "sha512-sBHqlxJ9ANkLluFkYRfd5r8Y0ApFew4FhOrlhgRAgD4XzEoFOukEo1nuBTQ1+jTtofqwn4NWQ2k0Tn5mNTjgUg=="
MEMBER = "package/dynoxide"
TIMEOUT_S = 30
FALLBACK = "make serve keeps moto's DynamoDB"


def supported() -> bool:
    return sys.platform == "linux" and platform.machine().lower() in ("x86_64", "amd64")


def integrity(data: bytes) -> str:
    """The Subresource Integrity string npm publishes: sha512, base64."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def binary(tarball: bytes) -> bytes:
    """The executable in a verified tarball (ValueError if the tarball is not the pinned one)."""
    if integrity(tarball) != INTEGRITY:
        raise ValueError(f"the tarball does not match the pinned integrity {INTEGRITY}")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.getmember(MEMBER)
        extracted = archive.extractfile(member) if member.isfile() else None
        if extracted is None:
            raise ValueError(f"{MEMBER} is not a file in the tarball")
        return extracted.read()


def install(target: Path) -> str:
    """Put the verified binary at `target` (atomically, mode 755); a one-line account of what happened."""
    if not supported():
        return f"dynoxide: no pinned build for {sys.platform} {platform.machine()}: {FALLBACK}"
    try:
        with urllib.request.urlopen(TARBALL, timeout=TIMEOUT_S) as response:
            executable = binary(response.read())
    except (OSError, ValueError, KeyError, tarfile.TarError) as exc:
        return f"dynoxide: {VERSION} not installed ({exc}): {FALLBACK}"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".dynoxide-")
    with os.fdopen(fd, "wb") as out:
        out.write(executable)
    os.chmod(temporary, 0o755)
    os.replace(temporary, target)  # never a half-written binary at `target`
    return f"dynoxide: {VERSION} installed at {target} (integrity verified)"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(install(Path(sys.argv[1])), flush=True)
