"""Scenario scripts as a user writes them (issue 37): the public objects come from the packages'
tops without loading torch, and the keyword forms (`BertrandMarket(firm="llm", preference=...,
backend=...)`, `AVTraffic(preference=..., backend=...)`, `TransformersBackend(adapters=folder)`)
are the explicit forms they stand for."""
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agents import LLMPolicy, TheoryPolicy, preference
from agents.llm import BackendError, Request
from conftest import HashBackend
from simulation import AVTraffic, BertrandMarket, TrafficSettings, llm_firm, theory_firm

ROOT = Path(__file__).resolve().parents[1]

PUBLIC = {
    "agents": {"LLMPolicy": "policies", "TheoryPolicy": "policies", "preference": "preferences",
               "HomoEconomicus": "preferences", "HomoMoralis": "preferences", "QLearningSettings": "qlearning"},
    "agents.llm": {"TransformersBackend": "transformers_backend", "OpenAIBackend": "openai_backend",
                   "ReplayBackend": "replay"},
    "simulation": {"BertrandMarket": "bertrand_market", "AVTraffic": "av_traffic",
                   "TrafficSettings": "traffic_settings", "llm_firm": "firms", "theory_firm": "firms",
                   "qlearning_firm": "firms", "step_together": "lockstep", "run_plans": "lockstep"},
    "markets": {"LogitBertrand": "bertrand", "PrisonersDilemma": "games", "PublicGoods": "games",
                "Trust": "games", "Dictator": "games", "Ultimatum": "games"},
}


class Holding(HashBackend):
    """A stand-in backend that says which adapters it holds, as TransformersBackend does."""
    adapters = {"alpha": Path("alpha"), "moralis-0.5": Path("moralis-0.5")}


# ------------------------------------------------------------------ imports
def test_public_objects_are_the_modules_own_from_the_package_tops():
    for package, names in PUBLIC.items():
        top = importlib.import_module(package)
        assert set(names) <= set(top.__all__) and set(top.__all__) <= set(dir(top))
        for name, module in names.items():
            assert getattr(top, name) is getattr(importlib.import_module(f"{package}.{module}"), name)
        for name in top.__all__:               # every exported name resolves
            assert getattr(top, name) is not None
        with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
            top.NoSuchThing  # noqa: B018


def test_importing_the_packages_loads_neither_torch_nor_their_modules():
    """`import agents, simulation, markets` runs no module of agents or simulation (PEP 562; the
    environments of markets, numpy and scipy only, are imported at once), and even the backends'
    classes come without torch: the Python 3.12 check installs no llm extra."""
    code = ("import sys\n"
            "import agents, agents.llm, markets, simulation\n"
            "early = [m for m in sys.modules if m.startswith(('agents.', 'simulation.', 'markets.', 'mesa'))"
            " and m not in ('agents.llm', 'agents.lazy_exports', 'markets.av', 'markets.bertrand', 'markets.games')]\n"
            "from agents import LLMPolicy, TheoryPolicy, preference, HomoEconomicus, HomoMoralis, QLearningSettings\n"
            "from agents.llm import TransformersBackend, OpenAIBackend, ReplayBackend\n"
            "from simulation import BertrandMarket, AVTraffic, TrafficSettings, llm_firm, theory_firm\n"
            "from markets import LogitBertrand\n"
            "print(early, [m for m in ('torch', 'transformers', 'peft') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] []"


# ------------------------------------------------------------------ the keyword market
def test_keyword_llm_market_is_the_explicit_one():
    """firm="llm" makes every firm llm_firm(LLMPolicy(backend, adapter)): the same prices, period
    by period, as the explicit makers with the same seed; "base" and None are the base model."""
    backend = HashBackend()
    keyword = BertrandMarket(firm="llm", preference="moralis-0.5", backend=backend, periods=4, seed=3)
    explicit = BertrandMarket(firms=[llm_firm(LLMPolicy(backend, "moralis-0.5"))] * 2, periods=4, seed=3)
    base = BertrandMarket(firm="llm", preference="base", backend=backend, periods=4, seed=3)
    for model in (keyword, explicit, base):
        model.run_model()
    assert keyword.steps == 4 and keyword.prices().shape == (4, 2)
    np.testing.assert_array_equal(keyword.prices(), explicit.prices())
    np.testing.assert_array_equal(keyword.step_data().probability, explicit.step_data().probability)
    assert [(f.kind, f.label, f.policy.adapter) for f in keyword.firms] == [
        ("llm", "llm:moralis-0.5", "moralis-0.5")] * 2
    assert [f.label for f in base.firms] == ["llm:base"] * 2 and base.firms[0].policy.adapter is None
    assert not np.array_equal(base.prices(), keyword.prices())     # the adapter reaches the requests
    assert [f.label for f in BertrandMarket(firm="llm", backend=backend, seed=3).firms] == ["llm:base"] * 2


def test_keyword_llm_firms_pass_memory_and_free_prices_through():
    market = BertrandMarket(firm="llm", preference="alpha", backend=Holding(), memory=3, use_grid=False,
                            n_firms=3, seed=0)
    assert [(f.memory, f.use_grid) for f in market.firms] == [(3, False)] * 3
    theory = BertrandMarket(firm="theory", preference="economicus", use_grid=False, seed=0)
    assert [f.use_grid for f in theory.firms] == [False, False]


def test_batch_run_sweeps_llm_firms_of_one_backend():
    import mesa

    rows = pd.DataFrame(mesa.batch_run(BertrandMarket, parameters={
        "firm": "llm", "backend": HashBackend(), "preference": ["economicus", "moralis-0.5"], "periods": 2,
        "seed": 0}, iterations=1, number_processes=1, data_collection_period=1, display_progress=False))
    assert rows.groupby("preference").label.unique().map(tuple).to_dict() == {
        "economicus": ("llm:economicus",), "moralis-0.5": ("llm:moralis-0.5",)}


@pytest.mark.parametrize("kwargs, needle", [
    ({"firm": "llm"}, "firm='llm' needs backend="),
    ({"backend": HashBackend()}, "backend is for LLM firms: give firm='llm' \\(firm is 'theory'\\)"),
    ({"firm": "qlearning", "backend": HashBackend()}, "backend is for LLM firms"),
    ({"firm": "llm", "backend": HashBackend(), "kappa": 0.5}, "kappa is for theory firms"),
    ({"firms": [theory_firm(preference("economicus"))] * 2, "firm": "llm"}, "not both"),
    ({"firms": [theory_firm(preference("economicus"))] * 2, "backend": HashBackend()}, "not both"),
    ({"firm": "theory", "memory": 3}, "memory is for LLM firms"),
    ({"firm": "qlearning", "use_grid": False}, "use_grid is for theory and LLM firms"),
    ({"firm": "llm", "backend": Holding(), "preference": "gamma"}, "no adapter 'gamma' \\(loaded: \\['alpha'"),
    ({"preference": "moralis-0.5"}, "an adapter's name needs firm='llm' and backend="),
    ({"firm": "robot"}, "firm must be one of"),
])
def test_keyword_market_refuses_bad_combinations(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        BertrandMarket(**kwargs)


# ------------------------------------------------------------------ the keyword city
AV_SETTINGS = {"avs": 6, "brake_failure": 1.0, "pedestrian_rate": 0.9}


def test_keyword_llm_avs_are_the_explicit_deciders():
    """preference + backend: LLM AVs through that adapter, labelled as scenario files label them
    (llm:moralis-0.5), deciding every dilemma as the explicit deciders do; without a backend
    preference and kappa stay the theory AV."""
    backend = HashBackend()
    keyword = AVTraffic(preference="moralis-0.5", backend=backend, seed=2, n_steps=15, **AV_SETTINGS)
    explicit = AVTraffic([("llm:moralis-0.5", LLMPolicy(backend, "moralis-0.5"))], TrafficSettings(**AV_SETTINGS),
                         seed=2, n_steps=15)
    for model in (keyword, explicit):
        model.run_model()
    ours, theirs = keyword.dilemma_data(), explicit.dilemma_data()
    assert len(ours) >= 3 and set(ours.decider) == {"llm:moralis-0.5"}
    pd.testing.assert_frame_equal(ours, theirs)
    label, policy = keyword.deciders[0]
    assert label == "llm:moralis-0.5" and isinstance(policy, LLMPolicy) and policy.adapter == "moralis-0.5"
    assert AVTraffic(backend=backend, avs=2, seed=0).deciders[0][0] == "llm:base"
    theory = AVTraffic(preference="moralis", kappa=0.5, avs=2, seed=0)
    assert theory.deciders[0][0] == "moralis-0.5" and isinstance(theory.deciders[0][1], TheoryPolicy)


@pytest.mark.parametrize("kwargs, needle", [
    ({"deciders": [("llm:base", LLMPolicy(HashBackend()))], "backend": HashBackend()}, "not both"),
    ({"backend": HashBackend(), "preference": "moralis", "kappa": 0.5}, "kappa is for theory AVs"),
    ({"preference": "moralis-0.5"}, "an adapter's name needs backend="),
    ({"backend": Holding(), "preference": "gamma"}, "no adapter 'gamma'"),
])
def test_keyword_city_refuses_bad_combinations(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        AVTraffic(avs=2, seed=0, **kwargs)


# ------------------------------------------------------------------ the embedded model
@pytest.fixture(scope="module")
def folder_backend(model_folder, adapter_dir):
    """The backend as a tutorial script makes it: the adapters' folder, as scenario files name it."""
    from agents.llm import TransformersBackend

    return TransformersBackend(model_folder, adapters=str(adapter_dir))


@pytest.mark.slow
def test_adapters_folder_loads_what_the_dict_form_loads(folder_backend, adapter_backend):
    assert folder_backend.adapters == adapter_backend.adapters
    assert list(folder_backend.adapters) == ["alpha", "beta"]
    ask = Request.chat([{"role": "user", "content": "Do you cooperate or defect? Answer with one word."}],
                       options=("cooperate", "defect"))
    got = {a: folder_backend.choose([Request(ask.messages, a, options=ask.options)])[0] for a in ("alpha", "beta")}
    for adapter, probs in got.items():
        want = adapter_backend.choose([Request(ask.messages, adapter, options=ask.options)])[0]
        np.testing.assert_allclose(probs, want, rtol=1e-6)
    assert not np.allclose(got["alpha"], got["beta"])        # two adapters, each its own weights


@pytest.mark.slow
def test_adapters_folder_without_adapters_is_one_line(model_folder, adapter_dir, tmp_path):
    from agents.llm import TransformersBackend

    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "half" / "moralis-0.5").mkdir(parents=True)
    (tmp_path / "half" / "moralis-0.5" / "adapter_config.json").write_text("{}")
    for folder, needle in [(tmp_path / "empty", "no adapters in"), (tmp_path / "file.txt", "is not a folder"),
                           (tmp_path / "missing", "is not a folder"),
                           (tmp_path / "half", "adapter moralis-0.5: no adapter_model.safetensors")]:
        with pytest.raises(BackendError, match=needle) as err:
            TransformersBackend(model_folder, adapters=folder)
        assert "\n" not in str(err.value)
    single = TransformersBackend(model_folder, adapters=adapter_dir / "beta")   # a folder that is one adapter
    assert list(single.adapters) == ["beta"]


@pytest.mark.slow
def test_tutorial_market_on_the_embedded_model_is_the_explicit_one(folder_backend, adapter_backend):
    """The tutorial's two lines (a backend from the adapters' folder, a keyword market) price as
    the explicit makers on the dict-form backend do."""
    keyword = BertrandMarket(firm="llm", preference="alpha", backend=folder_backend, periods=2, seed=0)
    explicit = BertrandMarket(firms=[llm_firm(LLMPolicy(adapter_backend, "alpha"))] * 2, periods=2, seed=0)
    for model in (keyword, explicit):
        model.run_model()
    ours, theirs = keyword.step_data(), explicit.step_data()
    assert ours.valid.all() and len(ours) == 4
    np.testing.assert_array_equal(ours.price, theirs.price)
    np.testing.assert_allclose(ours.probability, theirs.probability, rtol=1e-6)


@pytest.mark.slow
def test_keyword_llm_avs_on_the_embedded_model_are_the_explicit_deciders(adapter_backend):
    keyword = AVTraffic(preference="beta", backend=adapter_backend, seed=2, n_steps=6, **AV_SETTINGS)
    explicit = AVTraffic([("llm:beta", LLMPolicy(adapter_backend, "beta"))], TrafficSettings(**AV_SETTINGS),
                         seed=2, n_steps=6)
    for model in (keyword, explicit):
        model.run_model()
    ours, theirs = keyword.dilemma_data(), explicit.dilemma_data()
    assert len(ours) >= 1 and set(ours.decider) == {"llm:beta"} and ours.valid.all()
    assert list(ours.action) == list(theirs.action)
    np.testing.assert_allclose(ours.p_swerve, theirs.p_swerve, rtol=1e-6)
