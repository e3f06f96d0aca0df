"""Hostile names in reports (issue 39): a scenario, study, policy or adapter name, the --out path and
the text of a record's table cells are shown in report.html as text, never as markup; opened in
headless Chromium, no payload runs a script or makes a request, and each reads as the text it was."""
import html
import json
import re
import shlex
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fake_server import FakeServer

from browser import Page, find_browser, open_report
from scenarios.cli import main
from scenarios.report import anchor, write_report

# Each would set window.pwned (or the title) if it ran; none may.
IMG = '<img src=x onerror="window.pwned=1;document.title=\'pwned\'">'
SCRIPT = "<script>window.pwned=2;alert(2)</script>"
SVG = '"><svg onload=window.pwned=3>'
TITLE = "</title><script>window.pwned=4</script>"
HREF = '<a href="javascript:window.pwned=5">click</a>'
NO_EQUALS = "<script>Object.assign(window,{pwned:6})</script>"      # `--adapter NAME=PATH` splits on "="
IN_FOLDER = ("<img src=x onerror=window.pwned=7>", '"><svg onload=window.pwned=8>')   # no "/" in a folder name
SHELL = "a b; $(touch pwned) `touch pwned` 'q'"              # a path for the page's rebuild command
MARKUP = ("<script", "<img src=x", "<svg", "<a href=\"javascript", "</title><")

FIRM = '[[firm]]\ntype = "theory"\npreference = "{}"\n'
AV_TYPE = '[[av]]\ntype = "theory"\npreference = "{}"\ncount = 3\n'
AV = ('[traffic]\nwidth = 20\nheight = 20\nbrake_failure = 1.0\n[run]\nsteps = 60\n'
      + AV_TYPE.format("economicus") + AV_TYPE.format("moralis") + "kappa = 1.0\n")


def toml_name(name: str) -> str:
    """`name = "..."`: a JSON string is a TOML basic string."""
    return f"name = {json.dumps(name)}\n"


def market(folder: Path, name: str, out: Path) -> Path:
    """A 5-period duopoly of theory firms named `name`, run through the CLI into `out`."""
    path = folder / f"market{len(list(folder.glob('*.toml')))}.toml"
    path.write_text(toml_name(name) + "[run]\nsteps = 5\n" + FIRM.format("economicus") * 2)
    assert main(["market", "run", str(path), "--out", str(out)]) == 0
    return out


def av(folder: Path, name: str, out: Path) -> Path:
    path = folder / f"av{len(list(folder.glob('*.toml')))}.toml"
    path.write_text(toml_name(name) + AV)
    assert main(["av", "run", str(path), "--out", str(out)]) == 0
    return out


def finetune_records(out: Path, registry: Path, names: tuple[str, ...]) -> Path:
    """A `finetune evaluate` folder for adapters in registry folders `names` (records only, no model)."""
    import pandas as pd

    from finetune.application_eval import plot_choice_curve
    from finetune.eval_plots import plot_theory_scores
    from finetune.heldout import write_evaluation_records

    out.mkdir(parents=True)
    for i, name in enumerate(names):
        (registry / name).mkdir(parents=True)
        (registry / name / "adapter_model.safetensors").write_bytes(bytes([i]))
        (registry / name / "manifest.json").write_text(json.dumps(
            {"preference": "economicus", "loss_curve": [[1, 2.0 - i], [2, 1.5 - i]]}))
    scores = pd.DataFrame([{"policy": p, "theory": "economicus", "items": 10, "share_equal": 0.5, "domain": "games"}
                           for p in ["base", *names]])
    scores.to_csv(out / "scores.csv", index=False)
    plot_theory_scores(scores, out / "scores.png")
    plot_choice_curve(pd.DataFrame({p: [0.2, 0.8] for p in ["base", *names]}, index=[1, 10]),
                      out / "choice_curve.png", "P(swerve)")
    write_evaluation_records(registry, dict.fromkeys(names), out, None, True)
    write_report(out)
    return out


def edit_json(folder: Path, name: str, change) -> None:
    record = json.loads((folder / name).read_text())
    change(record)
    (folder / name).write_text(json.dumps(record))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    """{case: (report folder, the texts the page must show)}, each written by the CLI (or, for the
    adapter registry, from records) with a hostile name in one field."""
    root = tmp_path_factory.mktemp("hostile")
    cases = {
        "market name <img>": (market(root, IMG, root / "m1"), [IMG]),
        "market name </title>": (market(root, TITLE, root / "m2"), [TITLE]),
        "av name <script>": (av(root, SCRIPT, root / "a1"), [SCRIPT]),
        "av name javascript: href": (av(root, HREF, root / "a2"), [HREF]),
        "market --out <script>": (market(root, "m", root / SCRIPT), [str(root / SCRIPT)]),
        "av --out <svg>": (av(root, "a", root / IN_FOLDER[1]), [str(root / IN_FOLDER[1])]),
        "market --out shell": (market(root, "m", root / SHELL), [str(root / SHELL)]),
    }
    scenario = root / f"{IN_FOLDER[0]}.toml"               # the study shows its scenario's file name
    scenario.write_text(toml_name("s") + "[run]\nsteps = 5\n" + (FIRM.format("moralis") + "kappa = 0.5\n") * 2)
    study = root / "study.toml"
    study.write_text(toml_name(SVG) + f"scenario = {json.dumps(str(scenario))}\n[grid]\n\"firm.kappa\" = [0.5]\n")
    assert main(["study", "run", str(study), "--out", str(root / "s1")]) == 0
    cases["study name <svg>, scenario file <img>"] = (root / "s1", [SVG, scenario.name])
    cases["adapter registry folders"] = (finetune_records(root / "f1", root / "registry", IN_FOLDER), list(IN_FOLDER))

    # text fields of JSON records that become table cells (and a column header), rebuilt by `econalign report`
    shutil.copytree(root / "m1", root / "m3")
    edit_json(root / "m3", "summary.json", lambda r: [s.update({"note": TITLE, SVG: 1}) for s in r["sessions"]])
    shutil.copytree(root / "a1", root / "a3")
    edit_json(root / "a3", "summary.json", lambda r: r["by_type"].update({IMG: r["by_type"].popitem()[1]}))
    shutil.copy(root / "s1" / "study.csv", root / "s1-note.csv")
    shutil.copytree(root / "s1", root / "s3")
    (root / "s3" / "study.csv").write_text((root / "s1-note.csv").read_text().replace("firm.kappa", HREF))
    for folder in ("m3", "a3", "s3"):
        assert main(["report", str(root / folder)]) == 0
    cases["market session cells"] = (root / "m3", [TITLE, SVG])
    cases["av by-type cells"] = (root / "a3", [IMG])
    cases["study column header"] = (root / "s3", [HREF])
    return cases


@pytest.fixture(scope="module")
def games(tmp_path_factory) -> tuple[Path, list[str]]:
    """`games eval` of one adapter with a hostile name, against a fake OpenAI-compatible server."""
    fake = FakeServer()
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    out = tmp_path_factory.mktemp("games") / "eval"
    try:
        assert main(["games", "eval", "--backend", "openai", "--url", fake.url, "--no-base", "--small",
                     "--adapter", NO_EQUALS, "--theory", "economicus", "--out", str(out)]) == 0
    finally:
        fake.shutdown()
        fake.server_close()
    return out, [NO_EQUALS]


@pytest.fixture(scope="module")
def page():
    """One headless Chromium window for every page of this module."""
    found = find_browser()
    if isinstance(found, str):
        pytest.skip(found)
    window = Page(*found)
    yield window
    window.close()


CASES = ["market name <img>", "market name </title>", "av name <script>", "av name javascript: href",
         "market --out <script>", "av --out <svg>", "market --out shell", "study name <svg>, scenario file <img>",
         "adapter registry folders", "market session cells", "av by-type cells", "study column header"]


def check_file(folder: Path, texts: list[str]) -> None:
    html = (folder / "report.html").read_text()
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    for text in texts:
        assert text not in html, text                       # no payload as written
    for markup in MARKUP:
        assert markup not in html, markup


def fresh(page: Page) -> None:
    """Forget what the window saw on earlier pages."""
    page.collect()
    page.responses.clear()
    page.failed.clear()
    page.console.clear()


def check_page(page: Page, folder: Path, texts: list[str], tmp_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    fresh(page)
    report = folder / "report.html"
    seen = open_report(page, report, tmp_path / "report.png")
    assert seen["errors"] == [] and seen["requests"] == [], seen      # CSP refusals are console errors
    assert seen["images"] >= 1 and seen["broken"] == 0, seen          # the policy lets data: figures show
    assert {url for _, url in page.responses if not url.startswith("data:")} == {report.resolve().as_uri()}
    assert page.driver.execute_script("return typeof window.pwned") == "undefined"
    with pytest.raises(NoAlertPresentException):
        page.driver.switch_to.alert                               # noqa: B018  (raises when none is open)
    hrefs = page.driver.execute_script("return Array.from(document.links).map(a => a.getAttribute('href'))")
    assert all(href.startswith("#") for href in hrefs), hrefs
    shown = page.driver.execute_script("return document.title") + "\n" + page.text()
    for text in texts:
        assert text in shown, (text, shown[:500])


@pytest.mark.parametrize("name", CASES)
def test_no_hostile_text_is_written_as_markup(hostile, name):
    check_file(*hostile[name])


@pytest.mark.browser
@pytest.mark.parametrize("name", CASES)
def test_hostile_text_reads_as_text_and_runs_nothing(hostile, page, name, tmp_path):
    check_page(page, *hostile[name], tmp_path)


@pytest.mark.slow
def test_a_hostile_adapter_name_given_to_games_eval(games):
    check_file(*games)
    assert NO_EQUALS in (games[0] / "overall.csv").read_text()           # the name reached the record


@pytest.mark.slow
@pytest.mark.browser
def test_a_hostile_adapter_name_given_to_games_eval_in_a_browser(games, page, tmp_path):
    check_page(page, *games, tmp_path)


def test_the_page_title_is_the_name_as_text(hostile):
    """The browser's title bar shows the name itself, escaped once (not twice)."""
    html = (hostile["market name </title>"][0] / "report.html").read_text()
    assert "<title>Repeated Bertrand market: &lt;/title&gt;&lt;script&gt;window.pwned=4&lt;/script&gt;</title>" in html
    assert "&amp;lt;" not in html


def test_the_rebuild_command_is_safe_to_paste_into_a_shell(hostile):
    """The footer's `econalign report DIR` quotes DIR: pasted into a shell, it runs nothing else."""
    for name in ("market --out shell", "market --out <script>"):
        folder = hostile[name][0]
        command = re.search(r"<code>(.*?)</code>", (folder / "report.html").read_text()).group(1)
        assert shlex.split(html.unescape(command)) == ["econalign", "report", str(folder)]


def test_anchors_are_plain_words():
    assert anchor('"><svg onload=x> Prices: by period') == "svg-onload-x-prices-by-period"
    assert anchor("javascript:alert(1)") == "javascript-alert-1"
    assert anchor("<>") == "section"


class Counting(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):
        Counting.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.browser
def test_the_policy_stops_a_missed_escape(hostile, page, tmp_path):
    """Defence in depth: markup put into the page past the template (a missed escape) neither runs
    nor loads anything; the figures still show."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        html = (hostile["market name <img>"][0] / "report.html").read_text()
        injected = (f'<script>window.pwned=1</script><img src=x onerror="window.pwned=2"><img src="{url}/img">'
                    f'<link rel=stylesheet href="{url}/css"><iframe src="{url}/frame"></iframe>'
                    f'<svg onload="window.pwned=3"></svg>')
        report = tmp_path / "report.html"
        report.write_text(html.replace("<main>", "<main>" + injected, 1))
        fresh(page)
        page.open(report.as_uri())
        page.wait_for(lambda p: p.driver.execute_script("return document.readyState === 'complete'"), 30, "load")
        assert page.driver.execute_script("return typeof window.pwned") == "undefined"
        assert page.driver.execute_script(
            "return Array.from(document.images).filter(i => i.src.startsWith('data:') && i.naturalWidth > 0)"
            ".length") >= 1
        page.collect()
        assert Counting.hits == [] and not [u for _, u in page.responses if u.startswith("http")]
        assert any("Content Security Policy" in c["message"] for c in page.console), page.console
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name", ["price $\\undefinedcmd{x}$ run", "$x^$", "100$ and 200$"])
def test_a_name_with_dollar_signs_is_plotted_as_written(name, tmp_path):
    """Figure titles carry the scenario's name; a `$...$` in it is text, not mathtext (a malformed
    formula used to stop the run with a traceback after the simulation)."""
    out = market(tmp_path, name, tmp_path / "o")
    assert (out / "prices.png").stat().st_size > 0
    assert name in (out / "report.html").read_text() or html.escape(name) in (out / "report.html").read_text()
