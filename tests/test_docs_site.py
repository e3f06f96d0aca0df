"""The documentation site (mkdocs.yml; `make docs`), built strictly into the test's folder and opened
from disk (file://) in headless Chromium (tests/browser.py): every page of the nav loads with its
images decoded and without one request leaving the machine (the page's resource timings and
Chromium's network log hold only file:, data:, blob: and about: URLs), the search works from disk
and leads to pages that exist, and a screenshot of every page is saved (in the test's folder and,
with ECONALIGN_SCREENSHOTS set, there too). And the strict build fails on a link to a missing page,
naming it. The pages are read from the nav, so the test holds as the pages grow."""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is installed by `make test`")
pytest.importorskip("material", reason="the docs extra is installed by `make test`")
yaml = pytest.importorskip("yaml", reason="MkDocs installs PyYAML")

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).parent / "mkdocs"
LOCAL = ("file:", "data:", "blob:", "about:")
SEARCH_WORD = "collusion"


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of `config` into `site`."""
    return subprocess.run([str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
                          cwd=config.parent, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})     # Material's banner about MkDocs 2


class _Loader(yaml.SafeLoader):
    """YAML as MkDocs reads it, its Python tags (`!!python/name:...`, `!ENV`) read as None."""


_Loader.add_multi_constructor("", lambda loader, suffix, node: None)


def nav_pages(config: Path = ROOT / "mkdocs.yml") -> list[str]:
    """The Markdown files the nav names, in order (links to other sites left out)."""
    def walk(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from walk(value) if isinstance(value, list) else [value]

    return [page for page in walk(yaml.load(config.read_text(), Loader=_Loader)["nav"]) if "://" not in page]


def html_path(page: str) -> str:
    """A page's file in the built site (the offline plugin turns directory URLs off)."""
    return page[:-len(".md")] + ".html"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    started = time.time()
    done = build(ROOT / "mkdocs.yml", out)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-4000:]}"
    print(f"site built in {time.time() - started:.1f} s")
    return out


def test_the_nav_and_the_built_pages_match(site):
    pages = nav_pages()
    assert len(pages) == len(set(pages)) > 10
    for page in pages:
        assert (site / html_path(page)).is_file(), f"{page} was not built"
    assert (site / "reference" / "scenario-keys.html").is_file() and (site / "reference" / "commands.html").is_file()
    assert (site / "search" / "search_index.js").is_file(), "the offline plugin's search index is missing"
    assert not (site / "hooks").exists(), "the build hook was copied into the site"


def _network_urls(page) -> list[str]:
    """Every URL Chromium requested or received since the last call (its performance log)."""
    urls = []
    for entry in page.driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            urls.append(params["request"]["url"])
        elif message["method"] == "Network.responseReceived":
            urls.append(params["response"]["url"])
    return urls


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.browser
def test_every_page_opens_offline_from_disk_with_search(site, browser, tmp_path):
    page = browser(width=1400, height=1000)
    shots = [tmp_path / "screenshots"]
    if os.environ.get("ECONALIGN_SCREENSHOTS"):
        shots.append(Path(os.environ["ECONALIGN_SCREENSHOTS"]) / "docs")
    problems = []
    for name in nav_pages():
        path = site / html_path(name)
        page.open(path.as_uri())
        page.wait_for(lambda p: p.driver.execute_script(
            "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"),
            30, f"{name}: the page and its images")
        broken = page.driver.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        problems += [f"{name}: image not decoded: {src}" for src in broken]
        resources = page.driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        for url in [*resources, *_network_urls(page)]:
            if not url.startswith(LOCAL):
                problems.append(f"{name}: request left the machine: {url}")
        severe = [c["message"] for c in page.driver.get_log("browser") if c["level"] == "SEVERE"]
        problems += [f"{name}: console error: {message}" for message in severe]
        stem = name[:-len(".md")].replace("/", "__")
        for folder in shots:
            shot = page.screenshot(folder / f"{stem}.png")
            width, height = _png_size(shot)
            assert width >= 800 and height >= 600 and shot.stat().st_size > 5_000, f"{shot}: a trivial screenshot"
    assert not problems, "\n".join(problems)

    # search from disk: Material's search box, the offline plugin's bundled index
    from selenium.webdriver.common.by import By

    page.open((site / "index.html").as_uri())
    page.wait_for(lambda p: p.driver.execute_script("return document.readyState === 'complete'"), 30, "the home page")
    box = page.driver.find_element(By.CSS_SELECTOR, "input.md-search__input")
    page.wait_for(lambda p: box.is_displayed(), 10, "the search box")
    box.click()              # as a reader does: on file:// Material sets the search up when it opens
    box.send_keys(SEARCH_WORD)

    def results(p) -> list[str]:
        return p.driver.execute_script(
            "return Array.from(document.querySelectorAll('.md-search-result__item a')).map(a => a.href)")

    page.wait_for(results, 30, f"search results for {SEARCH_WORD!r}")
    hrefs = results(page)
    targets = [Path(unquote(urlparse(href).path)) for href in hrefs if href.startswith("file:")]
    assert targets and all(href.startswith("file:") for href in hrefs), hrefs
    assert any(target.is_file() and target.is_relative_to(site) for target in targets), hrefs
    missing = [str(t) for t in targets if not t.is_file()]
    assert not missing, f"search results link to missing pages: {missing}"
    leaked = [url for url in _network_urls(page) if not url.startswith(LOCAL)]
    assert not leaked, f"the search made requests off the machine: {leaked}"
    for folder in shots:
        _png_size(page.screenshot(folder / "search.png"))


def test_the_strict_build_fails_on_a_broken_link(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    config = (ROOT / "mkdocs.yml").read_text()
    config = re.sub(r"paths: \[\.\]", f"paths: [{json.dumps(str(ROOT))}]", config)   # the packages stay in ROOT
    (tmp_path / "mkdocs.yml").write_text(config)
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + "\n\nSee [a page that is not there](no-such-page.md).\n")
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0, "the strict build passed with a broken link"
    assert "no-such-page.md" in done.stderr, done.stderr[-3000:]
