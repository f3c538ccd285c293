"""The pure rules of approvals: which changes need one, on what terms, who may decide, and
how a Slack request is proved genuine (Slack's documented example included)."""

from __future__ import annotations

import time

import pytest

from engine.approvals import (
    Approval,
    ApprovalDefaults,
    ApprovalRule,
    ApprovalSpec,
    ApprovalStatus,
    requirement,
    slack_action,
    slack_message,
    slack_sign,
    slack_signature_problem,
)
from engine.exceptions import RuleError
from engine.rules.check import load_valid

LIVE_DELETES_IN_PROD = ApprovalDefaults(rules=(ApprovalRule(frozenset({"delete_pod"}), frozenset({"prod"})),),
                                        approvers=frozenset({"alice", "bob"}))


@pytest.mark.parametrize(("action", "namespace", "dry_run", "needed"), [
    ("delete_pod", "prod", False, True),
    ("delete_pod", "prod", True, False),        # a dry run changes nothing: the rule says live only
    ("delete_pod", "dev", False, False),
    ("scale", "prod", False, False),
])
def test_the_service_rules_decide_by_action_namespace_and_dry_run(action, namespace, dry_run,
                                                                  needed) -> None:
    found = requirement(None, LIVE_DELETES_IN_PROD, action=action, namespace=namespace, dry_run=dry_run)
    assert (found is not None) == needed


def test_a_step_can_ask_and_narrow_but_never_waive_or_auto_approve() -> None:
    waive = ApprovalSpec(required=False, on_timeout="approve", approvers=("mallory",))
    found = requirement(waive, LIVE_DELETES_IN_PROD, action="delete_pod", namespace="prod", dry_run=False)
    assert found is not None and found.on_timeout == "deny"
    # Naming nobody the service allows does not make the change unapprovable nor open it up.
    assert found.approvers == {"alice", "bob"}
    narrow = requirement(ApprovalSpec(approvers=("alice", "carol"), timeout=60), LIVE_DELETES_IN_PROD,
                         action="scale", namespace="dev", dry_run=True)
    assert narrow is not None and narrow.approvers == {"alice"} and narrow.timeout == 60
    assert "step asks" in narrow.why
    both = ApprovalDefaults(on_timeout="approve")
    auto = requirement(ApprovalSpec(on_timeout="approve"), both, action="scale", namespace="dev",
                       dry_run=False)
    assert auto is not None and auto.on_timeout == "approve"


def approval(**changes) -> Approval:
    now = time.time()
    base = dict(id="appr-1", execution_id="exec-1", step_id="fix", seq=1, plan={}, plan_hash="ab" * 32,
                action="delete_pod", target={"kind": "Pod", "namespace": "prod", "name": "web-1"},
                namespace="prod", dry_run=False, approvers=frozenset(), on_timeout="deny",
                requested_at=now, expires_at=now + 60, triggered_by="alice")
    return Approval(**{**base, **changes})


def test_who_may_decide() -> None:
    from engine.approvals import problem

    assert problem(approval(), "approve", "bob") is None
    assert problem(approval(), "approve", "alice")[0] == 403        # started it by hand
    assert problem(approval(), "deny", "alice") is None              # may still call it off
    assert problem(approval(approvers=frozenset({"carol"})), "approve", "bob")[0] == 403
    assert problem(approval(), "approve", "bob", plan_hash="cd" * 32)[0] == 409
    assert problem(approval(expires_at=time.time() - 1), "approve", "bob")[0] == 409
    decided = approval().decided(ApprovalStatus.DENIED, "carol", "api", None)
    status, reason = problem(decided, "approve", "bob")
    assert status == 409 and "already denied by carol" in reason


def test_slack_signatures_as_slack_documents_them() -> None:
    # The example of https://api.slack.com/authentication/verifying-requests-from-slack
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
            b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
            b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmi"
            b"bIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    stamp = "1531420618"
    expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert slack_sign(secret, stamp, body) == expected
    assert slack_signature_problem(secret, stamp, body, expected, now=1531420618 + 10) is None
    assert "away from now" in slack_signature_problem(secret, stamp, body, expected, now=1531420618 + 301)
    assert "does not match" in slack_signature_problem(secret, stamp, body + b"x", expected, now=1531420618)
    assert "does not match" in slack_signature_problem("other", stamp, body, expected, now=1531420618)
    assert "missing" in slack_signature_problem(secret, None, body, expected)
    assert "Unix time" in slack_signature_problem(secret, "soon", body, expected)


def test_the_slack_action_and_the_message_with_its_buttons() -> None:
    item = approval(plan={"dry_run_result": {"stdout": 'pod "web-1" deleted (dry run)'}})
    message = slack_message(item, "https://aetherius.example")
    actions = next(b for b in message["blocks"] if b["type"] == "actions")["elements"]
    payload = {"type": "block_actions", "user": {"id": "U1", "username": "bob"},
               "actions": [{"action_id": actions[1]["action_id"], "value": actions[1]["value"]}]}
    parsed = slack_action(payload)
    assert not isinstance(parsed, str)
    assert (parsed.decision, parsed.approval_id, parsed.plan_hash) == ("deny", "appr-1", item.plan_hash)
    assert "deleted (dry run)" in str(message["blocks"]) and "a LIVE change" in message["text"]
    assert "https://aetherius.example/api/v1/approvals/appr-1/approve" in message["text"]
    assert slack_action({"type": "view_submission"}) == "not a block_actions payload"
    assert "unknown action" in slack_action({**payload, "actions": [{"action_id": "rm -rf", "value": "x"}]})


def test_check_refuses_an_approval_that_outlasts_its_workflow(tmp_path) -> None:
    (tmp_path / "w.yaml").write_text("""
id: w
timeout: 10m
steps:
  - id: fix
    type: remediation
    config:
      action: delete_pod
      approval: {timeout: 30m}
""", encoding="utf-8")
    with pytest.raises(RuleError) as refused:
        load_valid(tmp_path)
    assert "w.yaml:9" in str(refused.value) and "shorter than the workflow timeout" in str(refused.value)
