"""Migrations: one number each (branches add them side by side; two files with one number
would apply only one of them on a database that has the other)."""

from __future__ import annotations

from engine.storage.db import migrations


def test_migration_versions_are_unique_and_the_console_sessions_are_one() -> None:
    found = migrations()
    versions = [version for version, _, _ in found]
    assert len(versions) == len(set(versions)), versions
    assert (10, "console_sessions") in {(version, name) for version, name, _ in found}
