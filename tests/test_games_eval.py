"""The games evaluation harness: theory policies score what theory says, kappa is recovered,
the embedded model runs end to end, human figures match their publications."""
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from agents.policies import TheoryPolicy
from agents.preferences import HomoEconomicus, HomoMoralis
from finetune.battery import INCENTIVES, build_battery
from finetune.evaluate import kappa_column, overall, run, summarize, theory_scores, write_games_tables
from finetune.human import load_moblab, tenths, wasserstein_tenths
from scenarios.cli import main


@pytest.fixture(scope="module")
def battery():
    return build_battery("log")


def test_battery_covers_games_roles_framings_and_incentives(battery):
    keys = {(i.game, i.role) for i in battery}
    assert keys == {("dictator", "dictator"), ("ultimatum", "proposer"), ("ultimatum", "responder"),
                    ("trust", "investor"), ("trust", "trustee"), ("prisoners-dilemma", "player"),
                    ("public-goods", "player")}
    assert {i.framing for i in battery} == {0, 1, 2}
    values = lambda name: {i.parameters[name] for i in battery if name in i.parameters}
    assert min(values("endowment")) == 10 and max(values("endowment")) == 1000
    assert values("multiplier") == {2, 3, 4, 5}
    assert min(values("mpcr")) == 0.3 and max(values("mpcr")) == 0.9
    assert min(values("players")) == 2 and max(values("players")) == 8
    assert len(values("T")) >= 4
    assert all(i.split == "heldout" for i in battery if i.framing == 2)
    assert {i.split for i in battery} == {"train", "heldout"}
    assert len({i.item_id for i in battery}) == len(battery)
    for item in battery:  # neutral wording with a fixed answer form
        text = item.situation().messages()[1]["content"]
        assert text.endswith(("ANSWER: <number>.", "ANSWER: defect."))
        assert "selfish" not in text and "fair" not in text and "should" not in text


def test_tags_follow_the_closed_forms(battery):
    for item in battery:
        p = item.parameters
        moral = dict(item.moralis)
        if item.game == "public-goods":  # linear in contributions, log only bends the payoff
            assert item.economicus == 0.0
        if item.game == "dictator":
            E = p["endowment"]
            for k in (0.3, 0.7):
                assert abs(moral[k] - (k * (1 + E) - 1) / (1 + k)) <= item.tolerance * 2 + 1e-9
        if item.game == "prisoners-dilemma":
            assert item.economicus == "defect"


@pytest.fixture(scope="module")
def theory_run(battery, tmp_path_factory):
    out = tmp_path_factory.mktemp("theory-eval")
    policies = {"economicus": TheoryPolicy(HomoEconomicus("log")),
                "moralis-0.3": TheoryPolicy(HomoMoralis("log", 0.3)),
                "moralis-0.7": TheoryPolicy(HomoMoralis("log", 0.7))}
    frame = run(battery, policies, out, show_progress=False)
    return out, frame, summarize(frame), overall(frame)


def test_economicus_policy_scores_full_economicus_match_and_theory_slopes(theory_run):
    _, frame, summary, totals = theory_run
    econ = summary[summary.policy == "economicus"]
    assert (econ.share_economicus == 1.0).all() and (econ.valid_rate == 1.0).all()
    for _, row in econ.iterrows():
        for x in INCENTIVES[row.game]:
            a, b = row[f"slope_{x}"], row[f"economicus_slope_{x}"]
            assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=1e-9)
    assert totals.set_index("policy").loc["economicus", "share_economicus"] == 1.0


@pytest.mark.parametrize("kappa", [0.3, 0.7])
def test_moralis_policy_recovers_its_kappa(theory_run, kappa):
    _, frame, summary, totals = theory_run
    row = totals.set_index("policy").loc[f"moralis-{kappa:g}"]
    assert row.best_kappa == kappa and row.best_kappa_share == 1.0
    assert row.best_kappa_range == f"{kappa:g}-{kappa:g}"  # identified, not merely consistent
    dictator = summary[(summary.policy == f"moralis-{kappa:g}") & (summary.game == "dictator")].iloc[0]
    # log utility: g* = (k(1 + E) - 1)/(1 + k), so the slope on the endowment is k/(1 + k)
    assert dictator.slope_endowment == pytest.approx(kappa / (1 + kappa), abs=0.01)


def test_theory_scores_per_game_and_role(theory_run):
    """Each theory policy equals its own theory in every role; the per-role item counts add up
    to the overall count and the overall share is their item-weighted mean."""
    _, frame, _, _ = theory_run
    theories = {"economicus": "economicus", "moralis-0.7": kappa_column(0.7)}
    overall_scores = theory_scores(frame, theories).set_index(["policy", "theory"])
    by_role = theory_scores(frame, theories, by=("game", "role"))
    assert len(by_role.groupby(["game", "role"])) == 7
    for theory in theories:
        own = by_role[(by_role.policy == theory) & (by_role.theory == theory)]
        assert (own.share_equal == 1.0).all() and (own.valid_rate == 1.0).all()
    other = by_role[(by_role.policy == "economicus") & (by_role.theory == "moralis-0.7")]
    total = overall_scores.loc[("economicus", "moralis-0.7")]
    assert other["items"].sum() == total["items"]
    assert (other.share_equal * other["items"]).sum() / other["items"].sum() == pytest.approx(total.share_equal)
    assert other.share_equal.min() < 1.0   # the two theories differ somewhere


def test_report_files(theory_run):
    out, frame, _, _ = theory_run
    write_games_tables(frame, out)
    for name in ("items.parquet", "summary.csv", "summary.md", "overall.csv", "actions.png",
                 "theory_match.png", "human.png"):
        assert (out / name).stat().st_size > 0
    stored = pd.read_parquet(out / "items.parquet")
    assert len(stored) == 3 * len(frame.item_id.unique())


def test_human_figures_match_the_publications():
    humans = load_moblab()
    published = {("dictator", "dictator"): 25.7, ("ultimatum", "proposer"): 44.13,
                 ("ultimatum", "responder"): 34.9, ("trust", "investor"): 42.02,
                 ("trust", "trustee"): 59.38, ("public-goods", "player"): 9.63}
    for key, mean in published.items():
        human = humans[key]
        assert human.mean == pytest.approx(mean)
        assert human.tenths.sum() == pytest.approx(1.0, abs=1e-3)
        midpoint_mean = (human.tenths * (np.arange(10) + 0.5) / 10).sum() * human.scale
        assert midpoint_mean == pytest.approx(mean, rel=0.2)  # the histogram agrees with the mean
    assert wasserstein_tenths(tenths([0.05] * 4), tenths([0.95] * 4)) == pytest.approx(0.9)


@pytest.mark.slow
def test_a_small_battery_runs_end_to_end_and_resumes(tmp_path, tiny_model):
    """`games eval --small` of a model and a theory: every item answered or marked invalid, one
    decision logged per model answer; a rerun after its checkpoint lost three quarters asks the
    model only the missing items. On the tiny random model (conftest.tiny_model): this checks the
    plumbing; the embedded model's answers are the main job's report test's."""
    out = tmp_path / "eval"
    args = ["games", "eval", "--small", "--model", str(tiny_model), "--theory", "economicus", "--out", str(out)]
    assert main(args) == 0
    frame = pd.read_parquet(out / "items.parquet")
    base = frame[frame.policy == "base"]
    assert len(base) == len(frame[frame.policy == "theory:economicus"]) > 40
    # every item has a valid action or an explicit invalid mark
    assert (base.valid == base.action.notna()).all()
    decisions = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    assert len(decisions) == len(base)
    # resume: keep a quarter of the checkpoint (base-model rows come first), rerun: only the
    # missing base items go to the model again
    lines = (out / "items.jsonl").read_text().splitlines()
    kept = len(lines) // 4
    (out / "items.jsonl").write_text("\n".join(lines[:kept]) + "\n")
    assert main(args) == 0
    again = pd.read_parquet(out / "items.parquet")
    assert len(again) == len(frame)
    new_decisions = (out / "decisions.jsonl").read_text().splitlines()
    assert len(new_decisions) == len(decisions) + len(base) - kept


@pytest.mark.slow
def test_resumed_run_answers_again_when_an_adapter_changes(tiny_model, tmp_path):
    """Answers saved for one adapter's weights are not reused for other weights under the same
    name (the resume key is the policy's model and adapter hash, not its name); the tiny random
    model's adapters (conftest.tiny_model)."""
    from agents.llm.transformers_backend import TransformersBackend
    from agents.policies import LLMPolicy
    from conftest import make_adapter

    items = [i for i in build_battery("linear", small=True) if i.game == "prisoners-dilemma"][:3]
    first = make_adapter(tiny_model, tmp_path / "a" / "x", seed=1)
    second = make_adapter(tiny_model, tmp_path / "b" / "x", seed=2)
    theory = TheoryPolicy(HomoEconomicus())
    out = tmp_path / "eval"
    for path in (first, first, second):
        policy = LLMPolicy(TransformersBackend(tiny_model, adapters={"x": path}), "x")
        frame = run(items, {"x": policy, "theory": theory}, out, show_progress=False)
        assert len(frame) == 6
    lines = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert sum(r["policy"] == "x" for r in lines) == 6          # first run, not the resumed one, then the new weights
    assert sum(r["policy"] == "theory" for r in lines) == 3     # the theory is answered once
    stamp = json.loads((out / "policies.json").read_text())
    assert stamp["x"].endswith(hashlib.sha256((second / "adapter_model.safetensors").read_bytes()).hexdigest())


def test_resumed_run_answers_again_when_the_theorys_utility_changes(tmp_path):
    """A theory policy's answers rest on its material utility too: rerun into the same folder
    with linear instead of log utility, it answers again (it used to keep the log answers)."""
    items = build_battery("linear", small=True)
    out = tmp_path / "eval"
    log_answers = run(items, {"moralis": TheoryPolicy(HomoMoralis(kappa=0.5, material_utility="log"))}, out,
                      show_progress=False)
    linear = TheoryPolicy(HomoMoralis(kappa=0.5))
    resumed = run(items, {"moralis": linear}, out, show_progress=False)
    fresh = run(items, {"moralis": linear}, tmp_path / "fresh", show_progress=False)
    assert not log_answers.action.equals(fresh.action)            # the two theories answer differently
    assert resumed.sort_values("item_id").action.tolist() == fresh.sort_values("item_id").action.tolist()


def test_an_interrupted_rerun_with_another_policy_keeps_no_old_answer(tmp_path, monkeypatch):
    """Policy "p" answers as homo economicus; rerun as homo moralis 1 into the same folder, it is
    interrupted after its first batch and resumed: every answer is the new policy's (the stamp of
    the new policy used to be written before any answer, so the resume kept the old ones)."""
    import finetune.answers as answers

    items = build_battery("linear", small=True)
    out = tmp_path / "eval"
    run(items, {"p": TheoryPolicy(HomoEconomicus())}, out, batch_size=4, show_progress=False)
    moralis = TheoryPolicy(HomoMoralis(kappa=1.0))
    decide, calls = answers.decide, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return decide(*args, **kwargs)

    monkeypatch.setattr(answers, "decide", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(items, {"p": moralis}, out, batch_size=4, show_progress=False)
    monkeypatch.setattr(answers, "decide", decide)
    resumed = run(items, {"p": moralis}, out, batch_size=4, show_progress=False)
    fresh = run(items, {"p": moralis}, tmp_path / "fresh", batch_size=4, show_progress=False)
    assert resumed.sort_values("item_id").action.tolist() == fresh.sort_values("item_id").action.tolist()


def test_an_llm_policys_resume_key_holds_how_it_is_asked():
    from agents.policies import LLMPolicy
    from finetune.answers import policy_identity

    class Backend:
        model_path, adapters = "/models/m", {}

    answer = policy_identity(LLMPolicy(Backend(), None, max_tokens=16))
    assert policy_identity(LLMPolicy(Backend(), None, max_tokens=16)) == answer
    assert policy_identity(LLMPolicy(Backend(), None, reason=True, max_tokens=128)) != answer
    assert policy_identity(LLMPolicy(Backend(), None, max_tokens=16, temperature=1.0)) != answer


def test_an_adapter_folder_with_an_equals_sign_in_its_path_is_a_folder(tmp_path, monkeypatch):
    """`--adapter PATH` of a folder such as runs/lr=1e-4/moralis is that folder, named by its last
    part (before: split at "=" into the name "runs/lr" and the path "1e-4/moralis");
    `--adapter NAME=PATH` still names the adapter."""
    import scenarios.evaluation as evaluation

    folder = tmp_path / "lr=1e-4" / "moralis"
    folder.mkdir(parents=True)
    seen = {}
    monkeypatch.setattr(evaluation, "TransformersBackend",
                        lambda model, adapters, **kw: seen.update(adapters) or object())
    evaluation.build_policies("transformers", None, None, [str(folder), f"mine={folder}"], [],
                              include_base=False)
    assert seen == {"moralis": str(folder), "mine": str(folder)}
