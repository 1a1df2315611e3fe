"""Install Dynoxide, the DynamoDB emulator `make serve` runs, pinned and verified: `make install` calls it.

    python scripts/dynoxide.py .venv/bin/dynoxide

Dynoxide (https://github.com/nubo-db/dynoxide) is a DynamoDB emulator in Rust on SQLite, checked against real
DynamoDB by a public conformance suite. moto's DynamoDB costs ~60 ms of CPU per imagegate request, one request
at a time; Dynoxide serves the same requests in a few milliseconds each, concurrently, with transactions that
stay atomic and isolated (tests/e2e/test_devserver_concurrency.py proves it through `make serve`).

The binary comes from its npm package (a package registry, not a release page): this version only, and only if
the tarball matches the integrity npm publishes for it, so no other bytes are ever run. Only the linux x86_64
build is pinned. On any other platform, or if the download fails (offline, cut short, too slow: the whole
download has a deadline and a size cap), this prints one line, writes it to `<target>.unavailable`, and exits
0: `make serve` then keeps moto's DynamoDB (devserver.py). The Makefile runs this once per version (its stamp
`.venv/.dynoxide-<version>`), so a failed download is not retried at every `make test`; delete the stamp and
run `make install` to try again.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import os
import platform
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

VERSION = "1.2.1"
TARBALL = f"https://registry.npmjs.org/@dynoxide/linux-x64/-/linux-x64-{VERSION}.tgz"
# npm's `dist.integrity` for that tarball (`npm view @dynoxide/linux-x64@1.2.1 dist.integrity`).
INTEGRITY = "sha512-sBHqlxJ9ANkLluFkYRfd5r8Y0ApFew4FhOrlhgRAgD4XzEoFOukEo1nuBTQ1+jTtofqwn4NWQ2k0Tn5mNTjgUg=="
MEMBER = "package/dynoxide"
TIMEOUT_S = 60  # the whole download, however the bytes trickle in (urllib's timeout is per socket read)
MAX_BYTES = 32 * 1024 * 1024  # the pinned tarball is ~4 MB
CHUNK = 64 * 1024
FALLBACK = "make serve keeps moto's DynamoDB"


def supported(system: str = sys.platform, machine: str = platform.machine()) -> bool:
    return system == "linux" and machine.lower() in ("x86_64", "amd64")


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


def download(url: str, clock: Callable[[], float] = time.monotonic) -> bytes:
    """The body at `url`, within TIMEOUT_S in all and MAX_BYTES (ValueError past either)."""
    deadline = clock() + TIMEOUT_S
    chunks, size = [], 0
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        while chunk := response.read(CHUNK):
            size += len(chunk)
            if size > MAX_BYTES:
                raise ValueError(f"the download is larger than {MAX_BYTES} bytes")
            if clock() > deadline:
                raise ValueError(f"the download took longer than {TIMEOUT_S} s")
            chunks.append(chunk)
    return b"".join(chunks)


def install(target: Path, system: str = sys.platform, machine: str = platform.machine()) -> str:
    """Put the verified binary at `target` (atomically, mode 755), or leave `<target>.unavailable` saying
    why not; a one-line account of what happened."""
    marker = target.with_name(target.name + ".unavailable")
    if not supported(system, machine):
        return _unavailable(marker, f"dynoxide: no pinned build for {system} {machine}: {FALLBACK}")
    try:
        executable = binary(download(TARBALL))
    except (OSError, ValueError, KeyError, tarfile.TarError, http.client.HTTPException) as exc:
        return _unavailable(marker, f"dynoxide: {VERSION} not installed ({exc}): {FALLBACK}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".dynoxide-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(executable)
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)  # never a half-written binary at `target`
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    marker.unlink(missing_ok=True)
    return f"dynoxide: {VERSION} installed at {target} (integrity verified)"


def _unavailable(marker: Path, note: str) -> str:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(note + "\n")
    return note


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(install(Path(sys.argv[1])), flush=True)
