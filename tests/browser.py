"""The browser harness: headless Chromium (Debian's `chromium` and `chromium-driver`, installed by
`make test` where it can) driven by Selenium, for tests that open pages (the visual server,
HTML reports). Nothing is downloaded at run time: without Chromium, its driver or Selenium the
`browser` fixture skips with the reason.

A `Page` records what a page did: every HTTP response (status, URL) and the console messages.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)


def find_browser() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or the reason they cannot be used."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra: pip install -e '.[dev]')"
    binary = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = next((p for p in map(shutil.which, DRIVER) if p), None)
    if not binary or not driver:
        return ("headless Chromium is not installed (as root, `make test` installs Debian's chromium and "
                "chromium-driver with apt)")
    return binary, driver


class Page:
    """One Chromium window on a URL."""

    def __init__(self, binary: str, driver_path: str, width: int = 1400, height: int = 1000):
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        options = Options()
        options.binary_location = binary
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(driver_path), options=options)
        self.responses: list[tuple[int, str]] = []
        self.failed: list[str] = []
        self.console: list[dict] = []

    def open(self, url: str) -> None:
        self.driver.get(url)

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def wait_for(self, predicate, timeout: float, what: str) -> float:
        """Seconds until predicate(self) holds; an AssertionError naming `what` after `timeout`."""
        started = time.time()
        while time.time() - started < timeout:
            if predicate(self):
                return time.time() - started
            time.sleep(0.1)
        raise AssertionError(f"{what} not within {timeout} s; page text: {self.text()[:300]!r}")

    def collect(self) -> None:
        """Move the browser's network and console logs into responses, failed and console."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.responseReceived":
                response = message["params"]["response"]
                self.responses.append((int(response["status"]), response["url"]))
            elif message["method"] == "Network.loadingFailed":
                self.failed.append(message["params"].get("errorText", "failed"))
        self.console.extend(self.driver.get_log("browser"))

    def errors(self) -> list[str]:
        """Responses with status >= 400, failed loads, requests leaving the loopback, console errors."""
        self.collect()
        bad = [f"HTTP {status} {url}" for status, url in self.responses if status >= 400]
        bad += [f"request to {url}" for _, url in self.responses
                if url.startswith("http") and not url.startswith(("http://127.0.0.1", "http://localhost"))]
        bad += [f"load failed: {reason}" for reason in self.failed]
        bad += [f"console: {c['message']}" for c in self.console if c["level"] == "SEVERE"]
        return bad

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture
def browser():
    """A factory of Pages (closed after the test); skips when Chromium cannot be used."""
    found = find_browser()
    if isinstance(found, str):
        pytest.skip(found)
    pages = []

    def new_page(**size) -> Page:
        pages.append(Page(*found, **size))
        return pages[-1]

    yield new_page
    for page in pages:
        page.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def viz_server(model: str, timeout: float = 120):
    """`econalign viz <model>` on a free loopback port: yields its URL once it accepts connections."""
    port = free_port()
    exe = Path(sys.executable).parent / "econalign"
    server = subprocess.Popen([str(exe), "viz", model, "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + timeout
        while True:
            if server.poll() is not None:
                raise AssertionError(f"econalign viz {model} exited: {server.stdout.read()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError(f"econalign viz {model} did not listen within {timeout} s") from None
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=30)


def open_report(page: Page, path: Path, screenshot: Path | None = None) -> dict:
    """Open an HTML report from disk: seconds until its images are decoded, the images and the
    broken ones, the section titles, the network requests it made (a self-contained page makes
    none) and the page's errors; a screenshot if asked."""
    started = time.time()
    page.open(Path(path).resolve().as_uri())
    page.wait_for(lambda p: p.driver.execute_script(
        "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"),
        30, "the report's images")
    seconds = time.time() - started
    images, broken, titles = page.driver.execute_script(
        "return [document.images.length, Array.from(document.images).filter(i => i.naturalWidth === 0).length,"
        " Array.from(document.querySelectorAll('h2')).map(h => h.textContent)]")
    errors = page.errors()
    if screenshot is not None:
        page.screenshot(screenshot)
    return {"seconds": seconds, "images": images, "broken": broken, "titles": titles, "errors": errors,
            "requests": [url for _, url in page.responses if url.startswith("http")]}
