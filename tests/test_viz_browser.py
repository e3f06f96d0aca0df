"""The visual server's pages in a real browser (headless Chromium, tests/browser.py), offline:
every file the page loads comes from the loopback, the Mesa controls and plots render, Step
advances the model and redraws its plot, Play runs and pause stops, a control change followed
by Reset rebuilds the model with it (Mesa's SolaraViz; the selects and sliders are driven as a
user drives them and the page's summary line shows the rebuilt model); screenshots go to the
test's output folder. And `econalign viz` refuses to start, in
one line, when the page's assets are missing."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("solara", reason="the viz extra is installed by `make test`")

from browser import viz_server  # noqa: E402  (the `browser` fixture comes from conftest)

pytestmark = [pytest.mark.server, pytest.mark.browser]

READY_S, STEP_S, REBUILD_S, LLM_STEP_S = 10.0, 2.0, 2.0, 5.0          # issue 15's targets


def _step_count(page) -> int | None:
    found = re.search(r"Step:\s*(\d+)", page.text())
    return int(found.group(1)) if found else None


def _button(page, label: str):
    from selenium.webdriver.common.by import By

    for button in page.driver.find_elements(By.TAG_NAME, "button"):
        if button.text.strip().upper() == label.upper():
            return button
    raise AssertionError(f"no {label!r} button; page text: {page.text()[:300]!r}")


def _plots(page) -> list[str]:
    """The page's matplotlib figures: image sources (a blob or data URL, new on every redraw),
    read in one script call so that a redraw cannot leave a stale element."""
    sources = page.driver.execute_script("return Array.from(document.images).map(i => i.src)")
    return [src for src in sources if src.startswith(("blob:", "data:image"))]


def _select(page, label: str, option: str) -> None:
    """Choose `option` in the Vuetify select labelled `label`."""
    from selenium.webdriver.common.by import By

    for field in page.driver.find_elements(By.CSS_SELECTOR, ".v-select"):
        if field.find_elements(By.TAG_NAME, "label") and field.find_element(By.TAG_NAME, "label").text == label:
            field.find_element(By.CSS_SELECTOR, ".v-select__slot").click()
            break
    else:
        raise AssertionError(f"no select labelled {label!r}")
    def shown(p):       # an earlier select's closed menu keeps its items in the page, hidden
        return [i for i in p.driver.find_elements(By.CSS_SELECTOR, ".menuable__content__active .v-list-item")
                if i.text == option and i.is_displayed() and i.size["height"] > 0]

    page.wait_for(lambda p: shown(p), 5, f"option {option!r} in the open menu")
    shown(page)[0].click()
    page.wait_for(lambda p: not p.driver.find_elements(By.CSS_SELECTOR, ".menuable__content__active"), 5,
                  "the menu to close")


def _slide(page, label: str, presses: int) -> None:
    """Move the slider labelled `label` by `presses` steps with the arrow keys (as a keyboard user)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for field in page.driver.find_elements(By.CSS_SELECTOR, ".v-input__slider"):
        labels = field.find_elements(By.CSS_SELECTOR, "label")
        if labels and labels[0].text == label:
            thumb = field.find_element(By.CSS_SELECTOR, ".v-slider__thumb-container")
            page.driver.execute_script("arguments[0].focus()", thumb)
            key = Keys.ARROW_RIGHT if presses > 0 else Keys.ARROW_LEFT
            for _ in range(abs(presses)):
                thumb.send_keys(key)
            return
    raise AssertionError(f"no slider labelled {label!r}")


CONTROLS = {   # model: (selects, slider moves, the summary line of the rebuilt model)
    "market": ({"firm 0": "Q-learning"}, {"firms": 1, "kappa (homo moralis)": 5},
               "3 firms (qlearning, theory:moralis-0.75, theory:moralis-0.75)"),
    "av": ({"AVs decide by": "theory: homo economicus"}, {"AVs": 3}, "15 AVs deciding by economicus"),
}
FIRST_SUMMARY = {"market": "2 firms (theory:moralis-0.5, theory:moralis-0.5)",
                 "av": "12 AVs deciding by moralis-0.5"}


@pytest.mark.parametrize("model", ["market", "av"])
def test_page_renders_offline_and_responds(browser, model, tmp_path):
    page = browser()
    with viz_server(model) as url:
        started = time.time()
        page.open(url)
        ready = page.wait_for(lambda p: _step_count(p) == 0 and "STEP" in p.text().upper() and _plots(p),
                              READY_S, "the controls, step counter and first plot")
        page.screenshot(tmp_path / f"{model}-ready.png")
        assert "Loading app" not in page.text()
        selects, slides, rebuilt_summary = CONTROLS[model]
        assert "Model Parameters" in page.text() and all(c in page.text() for c in [*selects, *slides])
        assert FIRST_SUMMARY[model] in page.text()
        before = _plots(page)
        _button(page, "STEP").click()
        stepped = page.wait_for(lambda p: _step_count(p) == 1 and _plots(p) != before, STEP_S,
                                "Step: 1 and a redrawn plot")
        page.screenshot(tmp_path / f"{model}-step.png")

        _button(page, "▶").click()                        # play
        page.wait_for(lambda p: (_step_count(p) or 0) >= 4, 15, "play to reach step 4")
        _button(page, "❚❚").click()                       # pause (Mesa labels it so)
        time.sleep(0.5)
        paused_at = _step_count(page)
        time.sleep(1.5)
        assert _step_count(page) == paused_at, "the model kept stepping after pause"
        page.screenshot(tmp_path / f"{model}-played.png")

        before = _plots(page)
        for control, option in selects.items():
            _select(page, control, option)
        for control, presses in slides.items():
            _slide(page, control, presses)
        _button(page, "RESET").click()                   # Mesa rebuilds the model with the controls
        rebuilt = page.wait_for(lambda p: _step_count(p) == 0 and _plots(p) != before
                                and rebuilt_summary in p.text(), REBUILD_S,
                                f"a rebuilt model: {rebuilt_summary}")
        page.screenshot(tmp_path / f"{model}-rebuilt.png")
        errors = page.errors()
    assert not errors, errors
    print(f"{model}: ready {ready:.1f} s after load ({time.time() - started:.1f} s in all), "
          f"step {stepped:.2f} s, rebuild {rebuilt:.2f} s; screenshots in {tmp_path}")


@pytest.mark.slow
def test_market_page_steps_llm_firms_on_the_embedded_model(browser, model_folder, tmp_path):
    """The market page with both firms on the embedded model: RESET loads it, STEP prices and the
    plots grow.
    Slow: the visual server loads the embedded model and steps it in headless Chromium (about 30 s)."""
    page = browser()
    with viz_server("market") as url:
        page.open(url)
        page.wait_for(lambda p: _step_count(p) == 0 and _plots(p), READY_S, "the page")
        _select(page, "firm 0", "LLM: base model")
        _select(page, "rivals", "LLM: base model")
        before = _plots(page)
        _button(page, "RESET").click()                  # loads the embedded model once per server
        page.wait_for(lambda p: _plots(p) != before, 120, "the LLM market's plot (the model loaded)")
        time.sleep(1.0)
        before = _plots(page)
        _button(page, "STEP").click()                   # the first call warms the model up
        first = page.wait_for(lambda p: _step_count(p) == 1 and _plots(p) != before, 60, "the first LLM step")
        before = _plots(page)
        _button(page, "STEP").click()
        stepped = page.wait_for(lambda p: _step_count(p) == 2 and _plots(p) != before, LLM_STEP_S,
                                "an LLM step")
        page.screenshot(tmp_path / "market-llm-step.png")
        errors = page.errors()
    assert not errors, errors
    print(f"market, two LLM firms: first step {first:.2f} s, then {stepped:.2f} s")


def test_viz_refuses_to_start_without_the_page_assets(tmp_path):
    exe = Path(sys.executable).parent / "econalign"
    env = {**os.environ, "SOLARA_ASSETS_PROXY_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([str(exe), "viz", "market", "--port", "1"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(tmp_path) in proc.stderr and "solara-assets" in proc.stderr and "solara-vuetify-app" in proc.stderr
