"""Service configuration: ``config/config.yaml`` (or ``--config FILE``), then environment.

Any key can be overridden as ``AETHERIUS_<SECTION>__<KEY>`` (nested with more ``__``), for
example ``AETHERIUS_NATS__URL=nats://nats:4222`` or ``AETHERIUS_AI__TIMEOUT=45s``. Values
from the environment are parsed as YAML scalars, so ``true``, ``3`` and ``30s`` mean what
they say. Secrets (webhook URLs, passwords) belong in the environment, not in files.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from engine.exceptions import ConfigError

ENV_PREFIX = "AETHERIUS_"
DEFAULT_PATHS = (Path("config/config.yaml"),)

DEFAULTS: dict[str, Any] = {
    "rules": {"dir": "rules"},
    "nats": {"url": None, "subjects": ["internal.event.critical", "internal.event.anomaly"]},
    "ai": {"reasoning_service_url": None, "timeout": "30s", "max_retries": 3},
    "agent_manager": {"url": None},
    "database": {"dsn": None, "host": None, "port": 5432, "database": "aetherius_orchestrator",
                 "user": "postgres"},
    "redis": {"url": None},
    "http": {"host": "0.0.0.0", "port": 8081},
    "remediation": {"dry_run": True},
    "notifications": {"slack": {"webhook_url": None}, "webhooks": {}},
}


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    config = copy.deepcopy(DEFAULTS)
    candidates = [Path(path)] if path else [p for p in DEFAULT_PATHS if p.exists()]
    for file in candidates:
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such config file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: the config must be a mapping")
        _merge(config, data)
    env = os.environ if environ is None else environ
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        node = config
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return config
