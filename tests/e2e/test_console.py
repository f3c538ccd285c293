"""The web console in a real browser (headless Chromium through selenium) against ``aetherius
serve``: log in with a token, post a real event, open the incident it makes, read its
timeline and workflow graph, approve the change that waits for a human, see the outcome
change, and read the approval in the audit trail under the approver's name."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.browser import chromium, replaced, screenshot_on_failure, snapshot
from tests.e2e.harness import ServiceProcess
from tests.standins import AgentManager

pytestmark = pytest.mark.integration

POD = "web-7d9f8c6b5-x2x4k"
RULES = """
strategies:
  - id: console_backoff
    name: A crash-looping pod (console test)
    category: pod_failure
    workflow_id: console_fix
    priority: 50
    symptoms:
      - type: event
        conditions: {kind: Pod, reason: BackOff}
    correlation: {key: [namespace, workload], quiet: 1s, max_window: 10s, cooldown: 1m}
  - id: console_probe
    name: Failing probes, two ways to answer them
    category: pod_failure
    priority: 50
    symptoms:
      - type: event
        conditions: {kind: Pod, reason: Unhealthy}
    experiment:
      arms: [{workflow: probe_tell, weight: 1}, {workflow: probe_wait, weight: 1}]
    correlation: {key: [namespace, workload], quiet: 1s, max_window: 10s, cooldown: 1m}
workflows:
  - id: probe_tell
    trigger_type: manual    # an arm of console_probe's experiment (check does not count arms as starters)
    steps:
      - {id: tell, type: notification, config: {channel: log, message: "probe failing"}}
  - id: probe_wait
    trigger_type: manual
    steps:
      - {id: pause, type: wait, config: {duration: 1s}}
  - id: console_fix
    name: Read the logs, find the cause, delete the pod once a human agrees
    trigger_type: event
    timeout: 5m
    steps:
      - id: collect_logs
        type: command
        config:
          action: logs
          args: ["--tail=100"]
          target: {namespace: "{{ incident.namespace }}", name: "{{ incident.pod }}"}
        on_success: [analyse]
        on_failure: [tell_failure]
      - id: analyse
        type: ai_analysis
        config: {analysis_type: root_cause}
        on_success: [decide]
      - id: decide
        type: decision
        config:
          conditions:
            - {if: "analysis.root_cause == 'OOM'", then: fix}
          default: tell_owner
      - id: fix
        type: remediation
        config:
          action: delete_pod
        on_success: [tell_done]
        on_failure: [tell_failure]
      - id: tell_done
        type: notification
        config: {channel: log, message: "pod {{ incident.pod }} deleted"}
      - id: tell_owner
        type: notification
        config: {channel: log, message: "a human should look at {{ incident.pod }}"}
      - id: tell_failure
        type: notification
        config: {channel: log, message: "could not fix {{ incident.pod }}"}
"""


def backoff_event(reason: str = "BackOff", pod: str = POD) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    message = {"BackOff": f"Back-off restarting failed container web in pod {pod}_shop(0b6c9a52)",
               "Unhealthy": "Liveness probe failed: HTTP probe failed with statuscode: 500"}[reason]
    return {"apiVersion": "v1", "kind": "Event", "type": "Warning", "reason": reason, "count": 3,
            "message": message,
            "metadata": {"name": f"{pod}.{reason}", "namespace": "shop", "uid": f"ev-{reason}"},
            "involvedObject": {"kind": "Pod", "name": pod, "namespace": "shop", "uid": f"pod-{pod}"},
            "firstTimestamp": now, "lastTimestamp": now}


@pytest.fixture
def service(tmp_path: Path, pg_dsn, redis_url, redis_prefix, nats_url, nats_prefix) -> Any:
    agent = AgentManager().start()
    agent.stdout["logs"] = "java.lang.OutOfMemoryError: Java heap space\n\tat Cache.fill(Cache.java:41)"
    agent.stdout["delete_pod"] = f'pod "{POD}" deleted (server dry run)'
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "console.yaml").write_text(RULES, encoding="utf-8")
    proc = ServiceProcess(tmp_path / "svc", pg_dsn=pg_dsn, redis_url=redis_url, redis_prefix=redis_prefix,
                          nats_url=nats_url, nats_prefix=nats_prefix, agent_manager=agent.url,
                          rules_dir=rules,
                          replica="console-1",
                          extra={"approvals": {"required": [{"actions": ["delete_pod"]}], "poll": "0.2s"}})
    proc.start()
    yield proc, agent
    proc.stop(signal.SIGKILL)
    agent.stop()


@pytest.fixture
def browser() -> Any:
    driver = chromium()
    driver.implicitly_wait(2)
    yield driver
    driver.quit()


def token(service: ServiceProcess, name: str, role: str) -> str:
    answer = service.post("/api/v1/tokens", {"name": name, "role": role})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["token"])


def log_in(driver: Any, service: ServiceProcess, secret: str, path: str = "/ui/incidents") -> None:
    from selenium.webdriver.common.by import By
    driver.get(f"{service.url}{path}")
    assert "/ui/login" in driver.current_url          # no session: the login page
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.wait import WebDriverWait
    driver.find_element(By.ID, "token").send_keys(secret)
    driver.find_element(By.ID, "login").click()
    # The login's redirect takes its time under load: wait for it before reading the URL.
    with contextlib.suppress(TimeoutException):
        WebDriverWait(driver, 10).until(lambda d: d.current_url.startswith(f"{service.url}{path}"))
    assert driver.current_url.startswith(f"{service.url}{path}"), driver.current_url


def log_out(driver: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait
    button = driver.find_element(By.ID, "logout")
    button.click()
    WebDriverWait(driver, 10).until(replaced(button))
    assert driver.find_element(By.ID, "token") and "/ui/login" in driver.current_url


def text_of(driver: Any, element_id: str) -> str:
    """The element's text, read again if htmx or a navigation replaced it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    for _ in range(5):
        try:
            return str(driver.find_element(By.ID, element_id).text)
        except StaleElementReferenceException:
            time.sleep(0.2)
    return str(driver.find_element(By.ID, element_id).text)


def test_an_incident_from_event_to_approved_fix_in_the_browser(service, browser) -> None:
    from selenium.webdriver.common.by import By
    proc, agent = service
    operator, viewer = token(proc, "op1", "operator"), token(proc, "viewer1", "viewer")
    with screenshot_on_failure(browser, "console-flow"):
        log_in(browser, proc, operator)
        cookie = browser.get_cookie("aetherius_session")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert operator not in browser.page_source      # the token is never put in a page
        assert text_of(browser, "whoami").startswith("op1")

        # A real event, through the API's intake: it becomes one incident whose fix waits.
        posted = proc.post("/api/v1/events", backoff_event())
        assert posted.status_code in (200, 202), posted.text
        approval = proc.wait_for(lambda: next(iter(proc.get("/api/v1/approvals")["items"]), None), 30)
        incident_id = proc.get("/api/v1/incidents", strategy_id="console_backoff")["items"][0]["id"]

        browser.get(f"{proc.url}/ui/incidents")
        assert "1" in text_of(browser, "counts")
        snapshot(browser, "incidents")
        browser.find_element(By.LINK_TEXT, incident_id).click()
        assert browser.current_url.endswith(f"/ui/incidents/{incident_id}")
        timeline = text_of(browser, "timeline")
        for seen in ("BackOff on Pod shop/" + POD, "incident opened: console_backoff shop/web",
                     "command step collect_logs: succeeded", "ai_analysis step analyse: succeeded",
                     f"approval {approval['id']} asked for delete_pod"):
            assert seen in timeline, (seen, timeline)
        assert "OOM" in text_of(browser, "analysis")
        graph = browser.find_element(By.CSS_SELECTOR, "#graph svg")
        nodes = {n.get_attribute("data-step"): n.get_attribute("class")
                 for n in graph.find_elements(By.CSS_SELECTOR, "a.node")}
        assert nodes["collect_logs"].endswith("status-succeeded")
        assert nodes["fix"].endswith("status-waiting_approval")
        assert nodes["tell_owner"].endswith("status-not_run")
        assert "waiting approval" in text_of(browser, "outcome")
        plan = browser.find_element(By.CSS_SELECTOR, f"#approval-{approval['id']} pre.plan").text
        assert "deleted (server dry run)" in plan
        snapshot(browser, "incident-waiting-approval")

        card = browser.find_element(By.ID, f"approval-{approval['id']}")
        card.find_element(By.NAME, "comment").send_keys("checked the dry run in the console")
        card.find_element(By.CSS_SELECTOR, "button.approve").click()
        assert text_of(browser, "decided") and "decided=" in browser.current_url
        done = proc.wait_for(lambda: (e := proc.get(f"/api/v1/executions/{approval['execution_id']}"))
                             ["status"] != "running" and e, 30)
        assert done["status"] == "succeeded" and done["outcome"] == "remediated", done
        browser.get(f"{proc.url}/ui/incidents/{incident_id}")
        assert "remediated" in text_of(browser, "outcome")
        timeline = text_of(browser, "timeline")
        assert f"approval {approval['id']} approved by op1 via console" in timeline, timeline
        assert "remediation step fix: succeeded" in timeline
        nodes = {n.get_attribute("data-step"): n.get_attribute("class")
                 for n in browser.find_elements(By.CSS_SELECTOR, "#graph a.node")}
        assert nodes["fix"].endswith("status-succeeded") and nodes["tell_done"].endswith("status-succeeded")
        snapshot(browser, "incident-remediated")
        browser.get(f"{proc.url}/ui/executions/{approval['execution_id']}")
        assert "remediated" in text_of(browser, "outcome") and "tell_done" in text_of(browser, "steps")
        assert browser.find_elements(By.CSS_SELECTOR, "#graph a.node.status-succeeded")
        browser.get(f"{proc.url}/ui/approvals")
        assert text_of(browser, "none-waiting")
        assert "op1" in text_of(browser, "decided-list") and "console" in text_of(browser, "decided-list")
        assert sum(1 for r in agent.requests if r["body"].get("dry_run") is False) == 1   # one live change

        # A viewer reads the same page, with no buttons; the audit trail is the admin's.
        log_out(browser)
        browser.get(f"{proc.url}/ui/incidents/{incident_id}")
        assert "/ui/login" in browser.current_url        # the session is gone, not only the cookie
        log_in(browser, proc, viewer, f"/ui/incidents/{incident_id}")
        assert not browser.find_elements(By.CSS_SELECTOR, "button.approve")
        browser.get(f"{proc.url}/ui/audit")
        assert "may not admin" in text_of(browser, "error")
        log_out(browser)

        from tests.e2e.harness import TOKEN
        log_in(browser, proc, TOKEN, "/ui/audit?action=approval.")
        audit = text_of(browser, "audit")
        assert "approval.approved" in audit and "token:op1" in audit and "operator" in audit, audit
        details = browser.find_element(By.ID, "audit").get_attribute("innerHTML")
        assert "console" in details and approval["plan_hash"] in details
        snapshot(browser, "audit-trail")

        # The graph of the workflow itself, and the rule pages.
        browser.get(f"{proc.url}/ui/workflows/console_fix")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#graph a.node")) == 7
        assert browser.find_elements(By.CSS_SELECTOR, "#graph path.edge-decision")
        snapshot(browser, "workflow-graph")
        browser.get(f"{proc.url}/ui/rules/workflow/console_fix")
        assert "console.yaml" in text_of(browser, "read-only")
        browser.get(f"{proc.url}/ui/rules")
        assert "console_fix" in text_of(browser, "workflows") and "valid" in text_of(browser, "rules-status")
        snapshot(browser, "rules")

        # An experiment's incident, and its arm's outcome on the experiments page.
        probe = proc.post("/api/v1/events", backoff_event("Unhealthy", "api-5f6d7c8b9-q2w3e"))
        assert probe.status_code in (200, 202), probe.text
        proc.wait_for(lambda: [i for i in proc.get("/api/v1/incidents", strategy_id="console_probe")["items"]
                               if i["execution_id"]], 30)
        browser.get(f"{proc.url}/ui/experiments")
        arms = text_of(browser, "experiment-console_probe")
        assert "probe_tell" in arms and "probe_wait" in arms and "1 incidents" in arms, arms
        snapshot(browser, "experiments")


def test_the_rule_editor_checks_by_line_and_saves_as_the_editor(service, browser) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait
    proc, _ = service
    editor = token(proc, "ed1", "editor")
    with screenshot_on_failure(browser, "console-editor"):
        log_in(browser, proc, editor, "/ui/editor/workflow")
        area = browser.find_element(By.ID, "yaml")
        area.clear()
        area.send_keys("id: from_console\ntrigger_type: manual\nsteps:\n  - id: a\n    type: notification\n"
                       "    config: {channel: log, message: hi}\n    on_success: [nowhere]\n")
        # Checked as it is typed (htmx, under the page's CSP), then by the button (no script needed).
        WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda d: "line 7" in d.find_element(By.ID, "problems").text)
        button = browser.find_element(By.ID, "check")
        button.click()
        WebDriverWait(browser, 10).until(replaced(button))   # the checked page
        problems = text_of(browser, "problems")
        assert "line 7" in problems and "nowhere" in problems, problems
        snapshot(browser, "editor-problem")
        area = browser.find_element(By.ID, "yaml")
        area.clear()
        area.send_keys("id: from_console\ntrigger_type: manual\nsteps:\n  - id: a\n    type: notification\n"
                       "    config: {channel: log, message: hi}\n")
        browser.find_element(By.ID, "save").click()
        # The save redirects to the rule's page: wait for the navigation, not just the click.
        WebDriverWait(browser, 10).until(lambda b: b.current_url.endswith("/ui/rules/workflow/from_console"))
        assert browser.current_url.endswith("/ui/rules/workflow/from_console"), browser.current_url
        stored = proc.get("/api/v1/workflows/from_console")
        assert stored["source"] == "api" and stored["active"] is True
        audit = proc.get("/api/v1/audit", action="workflow.create", target_id="from_console")["items"]
        assert audit and audit[0]["actor"] == "ed1", audit


def test_no_cross_site_form_and_no_write_without_the_csrf_token(service) -> None:
    proc, _ = service
    operator = token(proc, "op2", "operator")
    with httpx.Client(base_url=proc.url, follow_redirects=False) as client:
        form = client.get("/ui/login")
        nonce = form.text.split('name="csrf" value="')[1].split('"')[0]
        login = client.post("/ui/login", data={"csrf": nonce, "token": operator, "next": "/ui/approvals"})
        assert login.status_code == 303, login.text
        assert "httponly" in login.headers["set-cookie"].lower() and "samesite=strict" in \
            login.headers["set-cookie"].lower()
        page = client.get("/ui/approvals")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        no_csrf = client.post("/ui/approvals/appr-x/approve", data={"plan_hash": "x"})
        assert no_csrf.status_code == 403
        wrong = client.post("/ui/approvals/appr-x/approve", data={"csrf": "0" * 64})
        assert wrong.status_code == 403
        evil = client.post("/ui/approvals/appr-x/approve", data={"csrf": csrf},
                           headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403
        missing = client.post("/ui/approvals/appr-x/approve", data={"csrf": csrf})
        assert missing.status_code == 404            # past every check: there is no such approval
        # The API takes the session too, with the CSRF header for a write.
        assert client.get("/api/v1/incidents").status_code == 200
        assert client.post("/api/v1/approvals/appr-x/approve", json={}).status_code == 403
        assert client.post("/api/v1/approvals/appr-x/approve", json={},
                           headers={"X-CSRF-Token": csrf}).status_code == 404
        client.post("/ui/logout", data={"csrf": csrf})
        assert client.get("/ui/approvals").status_code == 303
        assert client.get("/api/v1/incidents").status_code == 401
        # A session ends with its token: revoked, it is gone on every replica within auth.token_cache.
        form = client.get("/ui/login")
        nonce = form.text.split('name="csrf" value="')[1].split('"')[0]
        assert client.post("/ui/login", data={"csrf": nonce, "token": operator}).status_code == 303
        assert client.get("/ui/approvals").status_code == 200
        assert httpx.delete(f"{proc.url}/api/v1/tokens/op2", headers=proc.headers).status_code == 204
        proc.wait_for(lambda: client.get("/ui/approvals").status_code == 303, 10)
    logins = proc.get("/api/v1/audit", action="console.")["items"]
    assert [r["action"] for r in logins] == ["console.login", "console.logout", "console.login"]
    assert {r["actor"] for r in logins} == {"op2"}
