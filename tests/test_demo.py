"""The main job writes a report whose numbers are the theory's."""
import json

import pandas as pd
import pytest

from scenarios.demo import run_demo


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_model):
    """The main job's report at its own sizes (Calvano's 100 Q-learning sessions, the LLM duopoly's
    3 sessions of 30 periods, the AV runs), without the adapters' training, its LLM parts on the
    tiny random model (conftest.tiny_model): what is asserted of them is plumbing (one call a step,
    grid prices, shares in [0, 1]); the embedded model's answers are `make demo`'s.
    Slow: the main job's theory (its tables, the Bertrand curves and the battery's theory tags) and
    Calvano's 100 Q-learning sessions, at the job's sizes (about 30 s)."""
    # the adapters' training is the finetune tests' and the pipeline's business: skipped here
    return run_demo(tmp_path_factory.mktemp("demo"), finetune=False,
                    adapters=tmp_path_factory.mktemp("no_adapters"), model=tiny_model)


@pytest.mark.slow
def test_demo_report_files_and_numbers(report, tiny_model):
    manifest = json.loads((report / "manifest.json").read_text())
    assert manifest["model"] == str(tiny_model)             # the job ran on the model it was given
    for name in ("theory_table_linear.csv", "theory_table_log.md", "bertrand_kappa.png",
                 "bertrand_kappa.csv"):
        assert name in manifest["files"] and (report / name).stat().st_size > 0
    # where the job's time goes, stage by stage (no fine-tuning stage when it is skipped)
    stages = manifest["stages"]
    assert list(stages) == ["theory", "base model games", "markets", "AVs", "figures"]
    assert all(t["seconds"] >= 0 for t in stages.values()) and stages["markets"]["seconds"] > 0
    assert sum(t["seconds"] for t in stages.values()) == pytest.approx(manifest["seconds"], abs=0.5)
    table = pd.read_csv(report / "theory_table_linear.csv", index_col=[0, 1])
    assert list(table.columns) == ["economicus", "moralis-0.25", "moralis-0.5", "moralis-0.75", "moralis-1"]
    # public goods n=4, mpcr=0.5: contribute all iff kappa > 1/3; PD(5,3,1,0): cooperate iff kappa > 1/2
    assert table.loc[("public-goods", "player")].tolist() == ["0", "0", "20", "20", "20"]
    assert table.loc[("prisoners-dilemma", "player")].tolist()[-1] == "cooperate"
    assert float(table.loc[("bertrand", "firm"), "economicus"]) == pytest.approx(1.47293, abs=1e-4)
    assert float(table.loc[("bertrand", "firm"), "moralis-1"]) == pytest.approx(1.92498, abs=1e-4)
    games = pd.read_csv(report / "games" / "summary.csv")
    assert set(games.policy) == {"base", "theory:economicus"}
    assert len(games[games.policy == "base"]) == 7        # every game and role of the battery
    assert (games[games.policy == "theory:economicus"].share_economicus == 1.0).all()
    assert games.valid_rate.between(0, 1).all()
    assert (report / "games" / "actions.png").stat().st_size > 0
    curve = pd.read_csv(report / "bertrand_kappa.csv")
    for _, group in curve.groupby("firms"):
        assert group.delta.is_monotonic_increasing
        assert group.delta.iloc[0] == pytest.approx(0, abs=1e-6)
        assert group.delta.iloc[-1] == pytest.approx(1, abs=1e-6)


@pytest.mark.slow
def test_demo_markets_report_calvano_theory_and_the_base_duopoly(report):
    markets = pd.read_csv(report / "markets" / "markets.csv").set_index("market")
    calvano = markets.loc["Q-learning vs Q-learning (Calvano, 100 sessions)"]
    assert 0.80 <= calvano.delta <= 0.90
    assert markets.loc["theory economicus duopoly"].price == pytest.approx(1.47293, abs=1e-4)
    assert markets.loc["theory moralis-0.5 duopoly"].delta == pytest.approx(0.734, abs=1e-3)
    llm = markets.loc["LLM base vs base"]
    assert llm.calls_per_step == 1 and llm.sessions == 3 and llm.periods == 30
    assert llm.min_delta <= llm.delta <= llm.max_delta and llm.sd_delta >= 0
    # the base model prices on Calvano's grid: between its lowest and highest point
    assert 1.4277 - 1e-3 <= llm.price <= 1.9702 + 1e-3
    assert (report / "markets" / "llm_base" / "steps.parquet").exists()


@pytest.mark.slow
def test_demo_av_report_theory_and_the_base_model(report):
    avs = pd.read_csv(report / "avs" / "avs.csv").set_index("av")
    assert set(avs.index) == {"theory:economicus", "theory:moralis-0.25", "theory:moralis-0.5",
                              "theory:moralis-1", "llm:base"}
    assert avs.loc["theory:economicus", "swerve_share"] == 0.0
    # Bonnefon's one passenger vs N: moralis k swerves iff k N > 1
    assert avs.loc["theory:moralis-0.5", ["p_swerve_n1", "p_swerve_n10"]].tolist() == [0.0, 1.0]
    assert avs.loc["theory:moralis-1", "utilitarian_share"] == 1.0
    assert avs.loc["llm:base", "dilemmas"] > 0 and 0 <= avs.loc["llm:base", "p_swerve_n10"] <= 1
    assert (report / "avs" / "llm_base" / "choice_curve.png").exists()


@pytest.mark.slow
def test_demo_html_report_has_every_section_and_opens_in_a_browser(report, browser, tmp_path):
    """The main job's report.html (written by `econalign demo`, rebuilt here by `econalign report`):
    its sections in order, each with its figure, and it opens from disk with every image, no
    request and no console error. Without adapters the fine-tuning sections are left out."""
    from browser import open_report
    from scenarios.cli import main

    assert main(["report", str(report)]) == 0
    seen = open_report(browser(height=2400), report / "report.html", tmp_path / "report-demo.png")
    assert seen["titles"] == ["The theory", "The base model: against the theory", "The base model: against humans",
                              "Calvano's replication", "Theory and LLM duopolies", "Autonomous vehicles",
                              "Timings and the manifest"]
    # bertrand_kappa, games x3, calvano x2, theory + base LLM duopolies, AV casualties + theory + base curves
    assert seen["images"] == 11 and seen["broken"] == 0
    assert seen["errors"] == [] and seen["requests"] == []
    html = (report / "report.html").read_text()
    assert "LLM base vs base" in html and "Q-learning vs Q-learning (Calvano, 100 sessions)" in html
    assert "seconds per stage" in html and "base model games" in html


def test_transfer_rows_read_every_domain_the_choice_curve_at_n_and_the_llm_pairs_only():
    """scenarios.transfer's rows (also benchmarks/data_seeds.py's): an adapter's held-out shares
    per domain and P(swerve) at the asked N (the curve's entry N - 1); the LLM pairs of a
    market_runs table, not its Q-learning and theory rows."""
    from scenarios.transfer import adapter_rows, market_rows

    curve = [0.001, 0.03, 0.95, 0.96, 0.99, 0.99, 0.99, 0.99, 0.99, 0.993]
    manifest = {"evaluation": {"domains": {"games": {"share_equal": 0.704},
                                           "pricing": {"share_equal": 0.183, "share_within_step": 0.367},
                                           "av": {"share_equal": 0.593}},
                               "choice_curve": {"adapter": curve}},
                "train_seconds": 325.0, "situations": {"games": 160, "pricing": 64, "av": 96, "probe": 192}}
    (row,) = adapter_rows(2, {"moralis-0.5": manifest}, points=(1, 3, 10))
    assert row == {"arm": 2, "adapter": "moralis-0.5", "games": 0.704, "pricing_exact": 0.183,
                   "pricing_within_step": 0.367, "av": 0.593, "train_seconds": 325.0,
                   "p_swerve_n1": 0.001, "p_swerve_n3": 0.95, "p_swerve_n10": 0.993,
                   "situations": "games,pricing,av,probe"}
    table = pd.DataFrame([
        {"market": "Q-learning vs Q-learning (Calvano, 100 sessions)", "sessions": 100, "price": 1.79, "delta": 0.85,
         "sd_delta": 0.11},
        {"market": "theory moralis-0.5 duopoly", "sessions": 1, "price": 1.71, "delta": 0.734, "sd_delta": 0.0},
        {"market": "LLM economicus vs moralis-0.5", "pair": "economicus/moralis-0.5", "sessions": 3, "price": 1.585,
         "delta": 0.299, "sd_delta": 0.038, "min_delta": 0.263, "max_delta": 0.339}])
    assert market_rows("in-domain", table) == [
        {"arm": "in-domain", "pair": "economicus/moralis-0.5", "sessions": 3, "price": 1.585, "delta": 0.299,
         "sd_delta": 0.038, "min_delta": 0.263, "max_delta": 0.339}]
