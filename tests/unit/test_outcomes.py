"""An execution's outcome says what it did to the cluster, whatever its messages say."""

from __future__ import annotations

import pytest

from engine.outcomes import Outcome, outcome, so_far

APPLIED = ("remediation", "succeeded", {"applied": True, "dry_run": False, "action": "scale"})
DRY = ("remediation", "succeeded", {"applied": False, "dry_run": True, "action": "scale"})
SKIPPED = ("remediation", "skipped", {"applied": False, "reason": "the decision (None) names no patch"})
REFUSED = ("remediation", "failed", None)
NOTE = ("notification", "succeeded", {"sent": True})
FAILED_NOTE = ("notification", "failed", None)


@pytest.mark.parametrize(("status", "steps", "expected"), [
    ("succeeded", [APPLIED, NOTE], Outcome.REMEDIATED),
    ("failed", [APPLIED, FAILED_NOTE], Outcome.REMEDIATED),     # it happened, whatever failed after
    ("succeeded", [DRY, NOTE], Outcome.DRY_RUN),
    ("succeeded", [SKIPPED, NOTE], Outcome.NEEDS_HUMAN),
    ("failed", [REFUSED, NOTE], Outcome.FAILED),
    ("cancelled", [NOTE], Outcome.NEEDS_HUMAN),
    ("timed_out", [], Outcome.FAILED),
    ("succeeded", [NOTE], Outcome.NO_ACTION),
    ("succeeded", [("remediation", "succeeded", {"waiting_approval": True})], Outcome.WAITING_APPROVAL),
])
def test_outcome(status, steps, expected) -> None:
    assert outcome(status, steps) == expected


def test_the_sentence_a_notification_adds() -> None:
    def record(step):
        return {"type": step[0], "status": step[1], "output": step[2]}

    assert so_far({"fix": record(APPLIED)}) == "Changed: fix applied"
    assert so_far({"fix": record(DRY)}) == "Nothing was changed: fix ran as a dry run"
    assert so_far({"fix": record(SKIPPED)}) == ("Nothing was changed: fix (the decision (None) names no "
                                                "patch) - a human should look")
    assert so_far({"note": record(NOTE)}) == "Nothing was changed"
