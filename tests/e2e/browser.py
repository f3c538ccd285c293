"""Headless Chromium for the console's tests, driven by selenium with Debian's ``chromium``
and ``chromium-driver`` (``.ci/run`` installs them). Where either is missing the tests that
ask for a browser are skipped, saying how to install them. A failing step saves a screenshot
(and the page's HTML) under ``var/screenshots/`` (or ``$AETHERIUS_SCREENSHOTS``)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"


def screenshots() -> Path:
    where = Path(os.environ.get("AETHERIUS_SCREENSHOTS") or ROOT / "var" / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


def chromium() -> Any:
    """A headless Chromium (selenium WebDriver), or the test is skipped."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(f"headless Chromium is not installed (chromium and chromedriver): {INSTALL}")
    options = Options()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1440,1100", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@contextlib.contextmanager
def screenshot_on_failure(driver: Any, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        where = screenshots()
        with contextlib.suppress(Exception):
            driver.save_screenshot(str(where / f"{name}-failed.png"))
            (where / f"{name}-failed.html").write_text(driver.page_source, encoding="utf-8")
            print(f"screenshot of the failure: {where / (name + '-failed.png')} (url {driver.current_url})")
        raise


def snapshot(driver: Any, name: str) -> Path:
    """A screenshot of the whole page as it is now (for people to look at)."""
    path = screenshots() / f"{name}.png"
    height = driver.execute_script("return document.body.scrollHeight") or 1100
    driver.set_window_size(1440, min(max(int(height) + 40, 800), 6000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1100)
    return path


def replaced(element: Any) -> Any:
    """A wait condition: ``element`` left the page (a navigation or htmx replaced it).

    Selenium's ``staleness_of`` asks the element a question and waits for "stale element";
    while Chromium is swapping the document it may instead answer "Node with given id does
    not belong to the document" (an inspector error, seen with Chromium 156), which means
    the same thing."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    def check(_driver: Any) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    return check
