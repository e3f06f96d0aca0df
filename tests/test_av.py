"""AV dilemmas: the derived thresholds, theory AVs in traffic, casualty accounting, one batched
call per step with the embedded model, Bonnefon et al.'s figures, bad scenario files."""
import itertools
import json

import numpy as np
import pandas as pd
import pytest

from agents.dilemma import DilemmaSituation, bonnefon_probe, choice_curve
from agents.equilibria import best_response
from agents.llm.decision_log import DecisionLog, read_decisions
from agents.policies import LLMPolicy, TheoryPolicy
from agents.preferences import preference
from conftest import CountingBackend
from markets.av import AGES, BONNEFON_2016, KINDS, WEIGHTINGS, Dilemma, Person, swerve_threshold, theory_swerves
from scenarios.cli import main
from simulation.av_metrics import preference_effects
from simulation.av_traffic import AVTraffic
from simulation.traffic_settings import TrafficSettings


def bonnefon(passengers: int, pedestrians: int, age: str = "adult") -> Dilemma:
    ids = itertools.count()
    return Dilemma("barrier", tuple(Person(next(ids), "passenger", age) for _ in range(passengers)),
                   tuple(Person(next(ids), "pedestrian", age) for _ in range(pedestrians)))


def random_dilemma(rng) -> Dilemma:
    kind, ids = rng.choice(KINDS), itertools.count()
    people = lambda role, n: tuple(Person(next(ids), role, rng.choice(AGES), bool(rng.integers(2)))
                                   for _ in range(n))
    return Dilemma(kind, people("passenger", int(rng.integers(1, 4))), people("pedestrian", int(rng.integers(1, 9))),
                   people("pedestrian", int(rng.integers(1, 9))) if kind == "lane" else (),
                   weighting=rng.choice(WEIGHTINGS))


def test_closed_form_equals_the_generic_solver_on_random_dilemmas():
    """docs/theory.md: swerve iff (W^pass_stay - W^pass_swerve) + k (W^ped_stay - W^ped_swerve) > 0,
    checked against agents.equilibria.best_response on the owner's material payoff, at any belief."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        d = random_dilemma(rng)
        t = swerve_threshold(d)
        for kappa in (0.0, 0.1, 0.3, 0.5, 0.8, 1.0) + ((t,) if t <= 1 else ()):
            pref = preference("moralis", kappa) if kappa > 0 else preference("economicus")
            for belief in (0, 1):
                swerves = best_response(pref, d, belief).strategy == 1
                assert swerves == theory_swerves(d, kappa) == (kappa > t), (d, kappa)


@pytest.mark.parametrize("passengers, pedestrians", [(1, 1), (1, 2), (1, 4), (1, 10), (2, 3), (3, 9)])
def test_bonnefon_threshold_is_passengers_over_pedestrians(passengers, pedestrians):
    d = bonnefon(passengers, pedestrians)
    assert swerve_threshold(d) == pytest.approx(passengers / pedestrians)
    assert not theory_swerves(d, 0.0)                           # economicus protects its passengers
    assert theory_swerves(d, 1.0) == (pedestrians > passengers)  # kappa = 1: fewest deaths, inaction on ties
    # life-years: one child passenger vs elderly pedestrians needs kappa > 70 / (10 N)
    old = Dilemma("barrier", (Person(0, "passenger", "child"),),
                  tuple(Person(i + 1, "pedestrian", "elderly") for i in range(pedestrians)), weighting="life_years")
    assert swerve_threshold(old) == pytest.approx(7.0 / pedestrians)


def test_lane_dilemmas_economicus_stays_and_moralis_spares_the_larger_group():
    ids = itertools.count()
    group = lambda n: tuple(Person(next(ids), "pedestrian") for _ in range(n))
    d = Dilemma("lane", (Person(next(ids), "passenger"),), group(5), group(2))
    assert swerve_threshold(d) == 0.0 and theory_swerves(d, 0.01) and not theory_swerves(d, 0.0)
    e = Dilemma("lane", (Person(next(ids), "passenger"),), group(2), group(5))
    assert swerve_threshold(e) == float("inf") and not theory_swerves(e, 1.0)


def test_bad_dilemmas_are_refused():
    with pytest.raises(ValueError, match="kind must be"):
        Dilemma("cliff", (Person(0, "passenger"),), (Person(1, "pedestrian"),))
    with pytest.raises(ValueError, match="appears twice"):
        Dilemma("barrier", (Person(0, "passenger"),), (Person(0, "pedestrian"),))
    with pytest.raises(ValueError, match="someone ahead"):
        Dilemma("lane", (Person(0, "passenger"),), (Person(1, "pedestrian"),), ())


THEORY = [("theory:economicus", TheoryPolicy(preference("economicus")))] + [
    (f"theory:moralis-{k:g}", TheoryPolicy(preference("moralis", k))) for k in (0.25, 0.5, 1.0)]
KAPPA = {"theory:economicus": 0.0, "theory:moralis-0.25": 0.25, "theory:moralis-0.5": 0.5, "theory:moralis-1": 1.0}


@pytest.fixture(scope="module")
def theory_run():
    model = AVTraffic([d for d in THEORY for _ in range(5)], TrafficSettings(width=30, height=30, avs=20,
                                                                             brake_failure=0.3), seed=3)
    for _ in range(400):
        model.step()
    return model


def test_theory_avs_follow_their_thresholds_exactly(theory_run):
    d = theory_run.dilemma_data()
    assert len(d) > 80 and set(d.decider) == set(KAPPA) and set(d.kind) == {"barrier", "lane"}
    kappa = d.decider.map(KAPPA)
    assert ((d.action == "swerve") == (kappa > d.kappa_threshold)).all()
    assert (d[d.decider == "theory:economicus"].action == "stay").all()
    utilitarian = d[(d.decider == "theory:moralis-1") & d.is_utilitarian.notna()]
    assert utilitarian.is_utilitarian.astype(bool).all()


def test_casualties_are_conserved(theory_run):
    d, p, steps = theory_run.dilemma_data(), theory_run.people_data(), theory_run.step_data()
    assert not p.duplicated(["dilemma", "person"]).any()            # counted once per dilemma
    per = p.groupby("dilemma").killed.agg(["sum", "size"])
    assert (per["sum"].to_numpy() == d.killed.to_numpy()).all()
    assert (per["size"].to_numpy() == (d.killed + d.spared).to_numpy()).all()
    assert (d.killed.to_numpy() == np.where(d.action == "stay", d.ahead,
                                            np.where(d.kind == "barrier", d.passengers, d.other_lane))).all()
    killed = p[p.killed]
    assert killed.person.is_unique                                   # nobody dies twice
    first = killed.set_index("person").dilemma
    later = p[p.person.isin(first.index)]
    assert (later.dilemma <= later.person.map(first)).all()          # the dead are in no later dilemma
    assert steps.killed_passengers.sum() + steps.killed_pedestrians.sum() == len(killed)
    assert steps.dilemmas.sum() == len(d)
    assert len(theory_run.agents) == 20                              # AVs whose passengers died were replaced


def test_effects_have_the_theory_signs(theory_run):
    p = theory_run.people_data().merge(theory_run.dilemma_data()[["dilemma", "decider"]], on="dilemma")
    e = preference_effects(p, theory_run.dilemma_data()).set_index(["decider", "dimension"]).effect
    assert e["theory:economicus", "passengers vs pedestrians"] == 1.0   # its passengers always live
    assert e["theory:economicus", "inaction vs action"] == 1.0
    assert e["theory:moralis-1", "more vs fewer lives"] == 1.0          # utilitarian
    assert e["theory:moralis-1", "passengers vs pedestrians"] < 0


def test_bonnefon_probe_and_human_figures():
    assert BONNEFON_2016 == {1: 0.23, 10: 0.76}          # Bonnefon, Shariff & Rahwan 2016, Science 352:1573
    curve = choice_curve(bonnefon_probe(THEORY))
    human = curve["human (Bonnefon et al. 2016)"]
    assert human.loc[10] == 0.76 and human.loc[1] == 0.23
    for label, kappa in KAPPA.items():
        assert list(curve[label]) == [float(kappa * n > 1) for n in range(1, 11)]


@pytest.mark.slow
def test_llm_avs_make_one_batched_call_per_step(backend, tmp_path):
    counting = CountingBackend(backend)
    with DecisionLog(tmp_path / "decisions.jsonl") as log:
        policy = LLMPolicy(counting, None, log=log)
        model = AVTraffic([("llm:base", policy)] * 8 + THEORY[:1] * 2,
                          TrafficSettings(avs=10, brake_failure=0.6, pedestrian_rate=0.6), seed=2)
        for _ in range(25):
            model.step()
    d = model.dilemma_data()
    llm = d[d.decider == "llm:base"]
    assert len(llm) >= 3
    with_llm = d[d.decider == "llm:base"].groupby("step").size()
    assert counting.calls == len(with_llm) and counting.sizes == list(with_llm)   # one call per step
    assert max(model.backend_calls) == 1
    assert llm.valid.all() and llm.p_swerve.between(0, 1).all()
    assert ((llm.p_swerve > 0.5) == (llm.action == "swerve")).all()               # greedy: the likelier option
    records = list(read_decisions(tmp_path / "decisions.jsonl"))
    assert len(records) == len(llm)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-6 for r in records)
    assert "brakes have suddenly failed" in DilemmaSituation(bonnefon(1, 3)).messages()[1]["content"]


def test_cli_runs_the_theory_scenario(tmp_path):
    out = tmp_path / "run"
    assert main(["av", "run", "theory", "--out", str(out), ]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["by_type"]["theory:economicus"]["swerve_share"] == 0.0
    assert summary["choice_curve"]["theory:moralis-0.5"] == [0.0, 0.0] + [1.0] * 8
    for name in ("dilemmas.parquet", "people.parquet", "steps.parquet", "probe.parquet", "manifest.json",
                 "choice_curve.png", "casualties.png", "effects.png", "effects.csv", "utilitarian.csv"):
        assert (out / name).exists(), name
    assert pd.read_parquet(out / "dilemmas.parquet").shape[0] == summary["dilemmas"]


def test_a_run_without_dilemmas_succeeds_and_reports_no_deaths(tmp_path):
    """Brakes that never fail: no dilemma and no one dead; the run and its report still succeed
    (the report used to refuse the missing casualties figure, exit 2)."""
    path = tmp_path / "calm.toml"
    path.write_text('[traffic]\nbrake_failure = 0.0\n[run]\nsteps = 20\n'
                    '[[av]]\ntype = "theory"\npreference = "moralis"\nkappa = 0.5\ncount = 2\n')
    assert main(["av", "run", str(path), "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["dilemmas"] == 0
    assert (tmp_path / "o" / "report.html").exists() and not (tmp_path / "o" / "casualties.png").exists()


@pytest.mark.parametrize("text, message", [
    ("[traffic]\nbrake_failure = 1.5\n", "brake_failure must be in [0, 1]"),
    ('[traffic]\nspeed = 3\n', "[traffic]: unknown key 'speed'"),
    ('[run]\nsteps = 0\n', "[run] steps must be >= 1"),
    ('[[av]]\ntype = "theory"\npreference = "moralis"\nkappa = 2\n', "kappa must be in [0, 1]"),
    ('[[av]]\ntype = "llm"\npreference = "altruist"\n', "preference must be base, economicus or moralis-K"),
    ('[[av]]\ntype = "robot"\n', "type must be one of llm, theory"),
    ('[llm]\nbackend = "gpu"\n', '[llm] backend must be "transformers", "openai" or "replay"'),
    ('[traffic\n', "not valid TOML"),
])
def test_bad_av_scenario_files_get_one_line_errors(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text + '\n[[av]]\ntype = "theory"\npreference = "economicus"\n')
    assert main(["av", "run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_av_scenario_and_missing_adapter(tmp_path, capsys):
    assert main(["av", "run", "nowhere.toml", "--out", str(tmp_path / "o")]) == 2
    assert "bundled scenarios: " in capsys.readouterr().err
    path = tmp_path / "s.toml"
    path.write_text(f'[llm]\nadapters = "{tmp_path}/none"\n[[av]]\ntype = "llm"\npreference = "economicus"\n')
    assert main(["av", "run", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "no adapter 'economicus'" in capsys.readouterr().err


def test_mesa_batch_run_sweeps_traffic_by_keyword():
    """`mesa.batch_run(AVTraffic, parameters=...)` with plain keyword parameters (traffic settings,
    the theory AVs' preference): runs stop after `n_steps`, every AV has an agent row at every step
    (Step 0: the city before the first step), and model rows line up (step = Step - 1)."""
    import mesa

    rows = pd.DataFrame(mesa.batch_run(AVTraffic, parameters={"avs": [6, 12], "n_steps": 8, "seed": 0,
                                                               "preference": ["economicus", "moralis"]},
                                       iterations=1, max_steps=100, number_processes=1,
                                       data_collection_period=1, display_progress=False))
    assert rows.groupby(["avs", "preference"]).Step.max().eq(7).all()
    sizes = rows.groupby(["avs", "preference", "Step"]).size().reset_index(name="rows")
    assert (sizes.rows == sizes.avs).all()
    assert (rows.step == rows.Step - 1).all() and set(rows.decider) == {"economicus", "moralis-0.5"}
    model = AVTraffic(avs=3, brake_failure=1.0, kappa=0.9, seed=2)
    assert [label for label, _ in model.deciders] == ["moralis-0.9"] and model.settings.brake_failure == 1.0
    with pytest.raises(ValueError, match="unknown AVTraffic parameter 'speed'"):
        AVTraffic(speed=3)
    with pytest.raises(ValueError, match="not both"):
        AVTraffic(settings=TrafficSettings(), avs=3)


def test_several_seeds_step_in_lock_step_and_pool_as_separate_runs(tmp_path):
    """`[run] seeds`: the cities of every seed step together; the pooled summary is the separate
    runs' (counts added, dilemmas numbered on), and each run alone is the single-seed run."""
    from scenarios.av import run_av_scenario

    def run(name, **run_settings):
        return run_av_scenario("theory", tmp_path / name, progress=False,
                               overrides={"run": {"steps": 60, "probe": False, **run_settings}})

    one, two = run("one", seeds=[4]), run("two", seeds=[9])
    both = run("both", seeds=[4, 9])
    assert run("plain") == run("plain0", seeds=[0])            # no seeds: the scenario's own seed (0)
    assert both["seeds"] == [4, 9] and both["dilemmas"] == one["dilemmas"] + two["dilemmas"]
    for key in ("arrived", "crossed", "stops", "replaced", "ran_light", "averted"):
        assert both[key] == one[key] + two[key], key
    for label, t in both["by_type"].items():
        parts = [r["by_type"][label] for r in (one, two) if label in r["by_type"]]
        assert t["dilemmas"] == sum(p["dilemmas"] for p in parts)
        assert t["killed"] == sum(p["killed"] for p in parts)
    dilemmas = pd.read_parquet(tmp_path / "both" / "dilemmas.parquet")
    assert dilemmas.dilemma.is_unique and set(dilemmas.seed) == {4, 9}
