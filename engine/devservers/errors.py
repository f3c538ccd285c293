"""The one error of the embedded servers."""

from __future__ import annotations

from engine.exceptions import AetheriusError


class InfraError(AetheriusError):
    """An embedded server could not be started."""
