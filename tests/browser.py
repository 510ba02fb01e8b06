"""A real headless Chromium, driven by selenium, for the dashboard's tests.

Selenium blocks, so every call runs in a thread (``deferToThread``) while the reactor
keeps serving the pages it asks for.  The machine is offline: Chromium gets flags that
stop it calling home, selenium the driver's path (so selenium-manager never tries to
download one), and each browser a fresh profile.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--lang=en-US",
    "--window-size=1440,1000",
)
WAIT = 15.0  # seconds any one thing the page should show may take to show


def _which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (
            name if os.path.isabs(name) and os.access(name, os.X_OK) else None
        )
        if found:
            return found
    return None


def tools() -> tuple[str, str]:
    """Chromium's and chromedriver's paths, or SkipTest naming what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise SkipTest(
            "selenium is not installed (pip install selenium): the dashboard's browser test "
            "needs it"
        ) from None
    chromium = _which("chromium", "chromium-browser", "/usr/lib/chromium/chromium")
    driver = _which("chromedriver", "/usr/lib/chromium/chromedriver")
    missing = [n for n, p in (("chromium", chromium), ("chromedriver", driver)) if p is None]
    if missing:
        raise SkipTest(
            f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver): "
            "the dashboard's browser test needs a real browser"
        )
    assert chromium is not None and driver is not None
    return chromium, driver


def artifacts_dir() -> str:
    """``$DLBA_ARTIFACTS`` if set, else a new temporary folder."""
    path = os.environ.get("DLBA_ARTIFACTS")
    if path:
        os.makedirs(path, exist_ok=True)
        return os.path.abspath(path)
    return tempfile.mkdtemp(prefix="dlba-artifacts-")


class Browser:
    """One headless Chromium; each method returns a Deferred and runs selenium in a thread."""

    def __init__(self, driver: Any, profile: str) -> None:
        self.driver = driver
        self.profile = profile

    @classmethod
    def launch(cls, test: TestCase, *, dark: bool = False) -> Deferred[Browser]:
        """A browser that ``test``'s cleanup quits, whatever the outcome."""
        chromium, driver_path = tools()
        profile = tempfile.mkdtemp(prefix="dlba-chromium-")

        def start() -> Browser:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service

            options = webdriver.ChromeOptions()
            options.binary_location = chromium
            for flag in CHROMIUM_FLAGS:
                options.add_argument(flag)
            options.add_argument(f"--user-data-dir={profile}")
            # The console, to fail on script errors and CSP violations.
            options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
            service = Service(executable_path=driver_path, env={**os.environ, "SE_OFFLINE": "1"})
            driver = webdriver.Chrome(service=service, options=options)
            driver.set_page_load_timeout(WAIT)
            driver.set_script_timeout(WAIT)
            if dark:
                driver.execute_cdp_cmd(
                    "Emulation.setEmulatedMedia",
                    {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
                )
            return cls(driver, profile)

        def started(browser: Browser) -> Browser:
            test.addCleanup(browser.quit)
            return browser

        return deferToThread(start).addCallback(started)

    def quit(self) -> Deferred[None]:
        def stop() -> None:
            try:
                self.driver.quit()
            finally:
                shutil.rmtree(self.profile, ignore_errors=True)

        return deferToThread(stop)

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThread(fn, self.driver, *args)

    def get(self, url: str) -> Deferred[None]:
        return self.run(lambda d: d.get(url))

    def script(self, source: str, *args: Any) -> Deferred[Any]:
        return self.run(lambda d: d.execute_script(source, *args))

    def text(self, selector: str) -> Deferred[str | None]:
        return self.script(_TEXT, selector)

    def wait_for(
        self, what: str, script: str, check: Callable[[Any], bool], *args: Any
    ) -> Deferred[Any]:
        """Until ``check`` holds for what ``script`` returns (polled, at most WAIT seconds)."""

        def wait(driver: Any) -> Any:
            from selenium.common.exceptions import TimeoutException
            from selenium.webdriver.support.wait import WebDriverWait

            seen: list[Any] = [None]

            def ready(d: Any) -> Any:
                seen[0] = d.execute_script(script, *args)
                return check(seen[0])

            try:
                WebDriverWait(driver, WAIT, poll_frequency=0.1).until(ready)
            except TimeoutException:
                raise AssertionError(f"{what}: after {WAIT}s the page shows {seen[0]!r}") from None
            return seen[0]

        return self.run(wait)

    def wait_text(self, selector: str, check: Callable[[str], bool], what: str) -> Deferred[str]:
        return self.wait_for(what, _TEXT, lambda t: t is not None and check(t), selector)

    def console_errors(self) -> Deferred[list[str]]:
        def read(driver: Any) -> list[str]:
            return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]

        return self.run(read)

    def screenshot(self, path: str) -> Deferred[str]:
        """The whole page, as tall as it is."""

        def shoot(driver: Any) -> str:
            width = driver.execute_script("return document.documentElement.clientWidth")
            height = driver.execute_script("return document.documentElement.scrollHeight")
            # A headless window cannot grow past its screen; the emulated viewport can.
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            try:
                driver.save_screenshot(path)
            finally:
                driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
            return path

        return self.run(shoot)


_TEXT = "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;"
