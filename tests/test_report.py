"""HTML reports: every run kind writes one self-contained report.html from its own files; it opens
from disk in headless Chromium with every figure, no network request and no console error."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from browser import open_report
from scenarios.cli import main

ECONALIGN = [str(Path(sys.executable).parent / "econalign")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One output folder of each quick kind, written through the CLI (which writes the report)."""
    out = tmp_path_factory.mktemp("runs")
    commands = {"market": ["market", "run", "theory_moralis"], "av": ["av", "run", "theory"],
                "study": ["study", "run", "kappa"]}
    for name, command in commands.items():
        assert main([*command, "--out", str(out / name)]) == 0
    return out


def test_each_run_writes_its_report_from_its_own_files(runs):
    """The report holds the run's figures and its numbers as the run's records have them."""
    for name, figures in (("market", ["prices.png", "impulse.png"]), ("av", ["casualties.png", "choice_curve.png"]),
                          ("study", ["study.png"])):
        html = (runs / name / "report.html").read_text()
        assert html.count("data:image/png;base64,") == len(figures)
        assert all(f"({figure})" in html for figure in figures)
        assert "http://" not in html and "https://" not in html          # nothing to fetch
    market = (runs / "market" / "report.html").read_text()
    summary = json.loads((runs / "market" / "summary.json").read_text())
    assert summary["mean_delta"] == pytest.approx(0.7343, abs=1e-4)   # homo moralis 0.5 duopoly (docs/theory.md)
    assert "Mean Delta 0.734" in market and "p_N = 1.4729" in market and "p_M = 1.9250" in market
    av = (runs / "av" / "report.html").read_text()
    assert "23% at N = 1 and 76% at N = 10" in av                      # Bonnefon et al.'s humans
    study = pd.read_csv(runs / "study" / "study.csv")
    assert len(study) == 10 and f"{study.mean_delta.max():.4g}" in (runs / "study" / "report.html").read_text()


@pytest.mark.slow
def test_reports_open_in_a_browser_with_every_figure(runs, browser, tmp_path):
    for name, sections in (("market", ["Prices by period", "Impulse response", "The run"]),
                           ("av", ["Dilemmas and casualties", "Choice curve", "The run"]),
                           ("study", ["Collusion across the grid", "The run"])):
        seen = open_report(browser(), runs / name / "report.html", tmp_path / f"report-{name}.png")
        assert seen["titles"] == sections, name
        assert seen["images"] >= 1 and seen["broken"] == 0, (name, seen)
        assert seen["errors"] == [] and seen["requests"] == [], (name, seen)
        assert (tmp_path / f"report-{name}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_games_eval_report(tmp_path, browser):
    out = tmp_path / "games"
    assert main(["games", "eval", "--no-base", "--theory", "economicus", "--theory", "moralis:0.5", "--small",
                 "--out", str(out)]) == 0
    seen = open_report(browser(), out / "report.html", tmp_path / "report-games.png")
    assert seen["titles"] == ["Against the theory", "Against humans", "The run"]
    assert seen["images"] == 3 and seen["broken"] == 0 and seen["errors"] == [] and seen["requests"] == []
    html = (out / "report.html").read_text()
    assert "theory:moralis-0.5" in html and "MobLab" in html


@pytest.mark.slow
def test_report_of_100_calvano_sessions_opens_within_2_seconds(tmp_path, browser):
    """The 100-session Calvano replication: its report is small and opens in under 2 s."""
    out = tmp_path / "calvano"
    assert main(["market", "run", "calvano", "--out", str(out)]) == 0
    size = (out / "report.html").stat().st_size
    seen = open_report(browser(), out / "report.html", tmp_path / "report-calvano.png")
    print(f"calvano report: {size / 1e3:.0f} kB, open in {seen['seconds']:.2f} s")
    assert size < 1_000_000 and seen["seconds"] < 2.0
    assert seen["titles"] == ["Collusion index per session", "Impulse response", "The run"]
    assert seen["broken"] == 0 and seen["errors"] == [] and seen["requests"] == []


def test_a_missing_file_is_one_line_and_no_half_report(runs, tmp_path):
    folder = tmp_path / "market"
    shutil.copytree(runs / "market", folder)
    (folder / "report.html").unlink()
    (folder / "prices.png").unlink()
    proc = subprocess.run(ECONALIGN + ["report", str(folder)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "prices.png is missing" in proc.stderr
    assert not (folder / "report.html").exists()
    (folder / "manifest.json").unlink()
    proc = subprocess.run(ECONALIGN + ["report", str(folder)], capture_output=True, text=True)
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr and proc.stderr.count("\n") == 1


def test_report_rebuilds_identically_from_the_folder(runs, tmp_path):
    """`econalign report DIR` rebuilds the page the run wrote (the same files: the same page, but
    for the time it was built)."""
    folder = tmp_path / "av"
    shutil.copytree(runs / "av", folder)
    before = (folder / "report.html").read_text()
    assert main(["report", str(folder)]) == 0
    after = (folder / "report.html").read_text()

    def strip(html):
        return "\n".join(line for line in html.splitlines() if "report built" not in line)
    assert strip(after).replace(str(folder), "") == strip(before).replace(str(runs / "av"), "")
