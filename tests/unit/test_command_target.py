"""A command's target is the object its args name, not blindly the incident's."""

from __future__ import annotations

import pytest

from steps.command import target_from_args

INCIDENT = {"namespace": "data", "pod": "db-0", "kind": "PersistentVolumeClaim", "name": "data-db-0"}


@pytest.mark.parametrize(("action", "args", "target"), [
    ("get", ["storageclass", "fast-ssd"], {"kind": "StorageClass", "name": "fast-ssd"}),
    ("get", ["storageclass/fast-ssd", "-o", "yaml"], {"kind": "StorageClass", "name": "fast-ssd"}),
    ("get", ["storageclass"], {"kind": "StorageClass"}),
    ("describe", ["nodes"], {"kind": "Node"}),
    ("get", ["-o", "wide", "pvc", "data-db-0"], {"kind": "PersistentVolumeClaim", "namespace": "data",
                                                 "name": "data-db-0"}),
    ("get", ["pods", "-l", "job-name=nightly"], {"kind": "Pod", "namespace": "data"}),
    ("describe", ["hpa/web"], {"kind": "HorizontalPodAutoscaler", "namespace": "data", "name": "web"}),
])
def test_the_object_the_args_name(action, args, target) -> None:
    assert target_from_args(action, args, INCIDENT) == target


@pytest.mark.parametrize(("action", "args"), [
    ("logs", ["--tail=100", "--previous"]),       # logs read the incident's pod
    ("describe", []),                            # nothing named: the incident's object
    ("get", ["-o", "json"]),
    ("get", ["widgets.example.com", "x"]),        # a kind we do not know: left to the incident
])
def test_no_named_object_leaves_the_default(action, args) -> None:
    assert target_from_args(action, args, INCIDENT) is None
