"""Fine-tuning: theory-derived data, a tiny LoRA training run, adapters both backends load."""
import json
import re
import shutil
import string
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agents.preferences import HomoEconomicus, HomoMoralis
from agents.situations import FRAMINGS, N_FRAMINGS, SYSTEMS, GameSituation
from finetune.battery import HELDOUT_FRAMING, heldout
from finetune.dataset import ROLES, answer_class, make_examples, make_mixed_examples, read_jsonl, write_jsonl
from finetune.paraphrases import N_PARAPHRASES, PARAPHRASES, paraphrase_messages
from markets.games import GAMES

PREFS = [HomoEconomicus(), HomoMoralis(kappa=0.5)]


def _answer(text: str) -> str:
    return re.findall(r"ANSWER:\s*(\S+)", text)[-1]


@pytest.mark.parametrize("pref", PREFS, ids=lambda p: p.name)
def test_data_is_deterministic_and_every_answer_is_the_theory_action(pref):
    examples = make_examples(pref, 28, seed=11)
    assert examples == make_examples(pref, 28, seed=11)
    assert examples != make_examples(pref, 28, seed=12)
    assert {(e["meta"]["game"], e["meta"]["role"]) for e in examples} == set(ROLES)
    for e in examples:
        meta = e["meta"]
        roles = [m["role"] for m in e["messages"]]
        assert roles == ["system", "user", "assistant"]
        # recompute the theory's action from the parameters alone
        situation = GameSituation(GAMES[meta["game"]](**meta["params"]), meta["role"],
                                  received=meta["received"])
        if meta["framing"] < N_FRAMINGS:
            assert e["messages"][:2] == replace(situation, framing=meta["framing"]).messages()
        else:
            assert e["messages"][:2] == paraphrase_messages(situation, meta["framing"] - N_FRAMINGS)
        expected = situation.theory_action(pref)
        got = _answer(e["messages"][2]["content"])
        assert got == (expected if isinstance(expected, str) else f"{float(expected):.4g}")
        assert not heldout(meta["params"], meta["framing"])        # never a held-out setting
        assert "utility" in e["messages"][2]["content"].lower() or pref.kappa == 0


def test_answer_styles_share_the_situations_and_answers():
    """`answer` is the reasoning's last line; `role` puts the game and role before it."""
    pref = HomoMoralis(kappa=0.5)
    styles = {style: make_examples(pref, 14, seed=3, style=style) for style in ("reasoning", "answer", "role")}
    for reasoning, answer, role in zip(*styles.values()):
        assert reasoning["messages"][:2] == answer["messages"][:2] == role["messages"][:2]
        last = reasoning["messages"][2]["content"].splitlines()[-1]
        assert answer["messages"][2]["content"] == last
        name = {("trust", "investor"): "Trust game, investor", ("public-goods", "player"): "Public goods game",
                ("prisoners-dilemma", "player"): "Prisoner's dilemma"}.get((role["meta"]["game"], role["meta"]["role"]))
        lines = role["messages"][2]["content"].splitlines()
        assert lines[1] == last and (name is None or lines[0] == name + ".")
    with pytest.raises(ValueError, match="style must be one of"):
        make_examples(pref, 2, style="essay")


def _phrases(text: str, n: int = 6) -> set[tuple[str, ...]]:
    words = re.sub(r"[^a-z0-9{} ]", " ", text.lower()).split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_training_paraphrases_do_not_borrow_from_the_heldout_framing():
    heldout_text = [FRAMINGS[key][HELDOUT_FRAMING] for key in FRAMINGS] + [SYSTEMS[HELDOUT_FRAMING]]
    trained_text = [FRAMINGS[key][f] for key in FRAMINGS for f in range(N_FRAMINGS) if f != HELDOUT_FRAMING]
    heldout_phrases = set().union(*map(_phrases, heldout_text)) - set().union(*map(_phrases, trained_text))
    assert set(PARAPHRASES) == set(FRAMINGS)
    for key, wordings in PARAPHRASES.items():
        named = {f for _, f, _, _ in string.Formatter().parse(FRAMINGS[key][0]) if f}
        for text in wordings:
            assert not _phrases(text) & heldout_phrases, (key, _phrases(text) & heldout_phrases)
            assert {f for _, f, _, _ in string.Formatter().parse(text) if f} >= named - {"total"}, key


def test_data_balances_the_answers_within_a_role():
    """Homo moralis (kappa 0.5) cooperates below a temptation of about 6.1-6.6 and defects above
    it; the training draws must show both sides equally, or the model learns "cooperate"."""
    examples = make_examples(HomoMoralis(kappa=0.5), 160, seed=0, style="answer")
    pd = Counter(e["meta"]["action"] for e in examples if e["meta"]["game"] == "prisoners-dilemma")
    assert pd["cooperate"] == pd["defect"] > 0
    for game, role in ROLES:
        classes = Counter()
        for e in (e for e in examples if (e["meta"]["game"], e["meta"]["role"]) == (game, role)):
            meta = e["meta"]
            situation = GameSituation(GAMES[game](**meta["params"]), role, received=meta["received"])
            classes[answer_class(situation, meta["action"])] += 1
        if len(classes) > 1:
            assert max(classes.values()) <= sum(classes.values()) / 2 + 1, (game, role, classes)
    assert {e["meta"]["framing"] for e in examples} == {0, 1, *range(N_FRAMINGS, N_FRAMINGS + N_PARAPHRASES)}


def test_openai_export_and_cli(tmp_path):
    from scenarios.cli import main

    out = tmp_path / "moralis.jsonl"
    assert main(["finetune", "data", "--preference", "moralis", "--kappa", "0.5", "--n", "14",
                 "--situations", "games", "--out", str(out)]) == 0
    ours = read_jsonl(out)
    openai = read_jsonl(out.with_suffix(".openai.jsonl"))
    assert len(ours) == len(openai) == 14
    assert all(set(line) == {"messages"} for line in openai)
    assert [o["messages"] for o in ours] == [o["messages"] for o in openai]
    exe = Path(sys.executable).parent / "econalign"
    for bad, needle in ([["--preference", "moralis", "--kappa", "1.5"], "kappa"],
                        [["--preference", "moralis"], "kappa"], [["--preference", "economicus", "--n", "0"], "--n"]):
        args = [str(exe), "finetune", "data", "--out", str(tmp_path / "x.jsonl")] + bad
        if "--n" not in bad:
            args += ["--n", "5"]
        proc = subprocess.run(args, capture_output=True, text=True)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr


def _completion_loss(backend, examples, adapter):
    from agents.llm.backend import Request
    request_scores = []
    for e in examples:
        request = Request.chat(e["messages"][:2], adapter=adapter, options=(e["messages"][2]["content"], "x"))
        request_scores.append(backend.option_logprobs([request])[0][0])
    return -float(np.mean(request_scores))


@pytest.mark.slow
def test_tiny_training_lowers_the_loss_and_writes_a_manifest(tiny_adapter, model_folder):
    from agents.llm.models import model_hash
    from agents.llm.transformers_backend import TransformersBackend

    folder, examples = tiny_adapter
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["preference"] == "economicus" and manifest["kappa"] == 0.0
    assert manifest["base_model_sha256"] == model_hash(model_folder)
    assert manifest["data"]["examples"] == 16 and len(manifest["data"]["sha256"]) == 64
    assert manifest["situations"] == {"games": 8, "pricing": 4, "av": 4}
    assert manifest["precision"] == "float32" and (manifest["device"], manifest["dtype"]) == ("cpu", "float32")
    assert "device" not in manifest["hyperparameters"] and "dtype" not in manifest["hyperparameters"]
    assert manifest["hyperparameters"]["rank"] <= 16 and manifest["chat_format"] == "system role"
    assert manifest["lora_targets"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"])          # every linear layer of a Llama
    assert {"torch", "transformers", "peft", "trl"} <= set(manifest["versions"])
    assert len(manifest["loss_curve"]) >= 2
    config = json.loads((folder / "adapter_config.json").read_text())
    assert not config.get("modules_to_save") and config["r"] <= 16
    assert not (folder / "checkpoints").exists()
    backend = TransformersBackend(model_folder, adapters={"economicus": folder})
    before = _completion_loss(backend, examples, None)
    after = _completion_loss(backend, examples, "economicus")
    assert after < before - 0.1  # the trained answers became more likely


def killed_after(step, k):
    """SFTTrainer.training_step that raises KeyboardInterrupt once k steps are done (and saved)."""
    def training_step(self, *args, **kwargs):
        if self.state.global_step == k:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)
    return training_step


@pytest.mark.slow
def test_training_interrupted_within_an_epoch_resumes_to_the_uninterrupted_adapter(tmp_path, tiny_model,
                                                                                   monkeypatch):
    """Killed after its step-6 checkpoint (two steps into the second epoch of four steps) and
    rerun, a training run resumes and ends with the uninterrupted run's adapter to the bit: the
    resumed epoch keeps its batch order (finetune.checkpoints.epoch_order_callback; without it the
    length-grouped sampler drew another order and the weights differed).
    On the tiny random model (conftest.tiny_model): a resume is bit-identical or not on any model."""
    import torch
    from safetensors.torch import load_file
    from trl import SFTTrainer

    from finetune.train import TrainOptions, train

    examples = make_mixed_examples(HomoEconomicus(), {"games": 8, "pricing": 4, "av": 4}, seed=7)
    write_jsonl(examples, tmp_path / "data.jsonl")
    options = lambda name: TrainOptions(str(tmp_path / "data.jsonl"), str(tmp_path / name),  # noqa: E731
                                        base=str(tiny_model), max_steps=8, batch_size=4, learning_rate=1e-3,
                                        save_steps=3)
    train(options("whole"), show_progress=False)

    step = SFTTrainer.training_step

    monkeypatch.setattr(SFTTrainer, "training_step", killed_after(step, 6))
    with pytest.raises(KeyboardInterrupt):
        train(options("resumed"), show_progress=False)
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint-6").is_dir()
    monkeypatch.setattr(SFTTrainer, "training_step", step)
    train(options("resumed"), show_progress=False)
    assert json.loads((tmp_path / "resumed" / "manifest.json").read_text())["resumed"] is True
    whole, resumed = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("whole", "resumed"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # killed at the first epoch's end (checkpoint 4), resumed, killed within the second (checkpoint 6),
    # resumed: the same adapter (the second resume used to draw another batch order)
    twice = lambda: replace(options("twice"), save_steps=2)  # noqa: E731
    for killed_at in (4, 6):
        monkeypatch.setattr(SFTTrainer, "training_step", killed_after(step, killed_at))
        with pytest.raises(KeyboardInterrupt):
            train(twice(), show_progress=False)
        assert (tmp_path / "twice" / "checkpoints" / f"checkpoint-{killed_at}").is_dir()
    monkeypatch.setattr(SFTTrainer, "training_step", step)
    train(twice(), show_progress=False)
    again = load_file(tmp_path / "twice" / "adapter_model.safetensors")
    assert all(torch.equal(whole[k], again[k]) for k in whole)


@pytest.mark.slow
def test_checkpoints_of_other_options_are_not_resumed(tmp_path, tiny_model, monkeypatch, capsys):
    """Interrupted after its step-3 checkpoint, then rerun with another learning rate: the rerun
    trains from the start (it used to resume the other run's steps and record only its own
    options in the manifest)."""
    from trl import SFTTrainer

    from finetune.train import TrainOptions, train

    write_jsonl(make_mixed_examples(HomoEconomicus(), {"games": 8}, seed=7), tmp_path / "data.jsonl")
    options = lambda lr: TrainOptions(str(tmp_path / "data.jsonl"), str(tmp_path / "a"),  # noqa: E731
                                      base=str(tiny_model), max_steps=4, batch_size=4, learning_rate=lr, save_steps=3)
    step = SFTTrainer.training_step

    monkeypatch.setattr(SFTTrainer, "training_step", killed_after(step, 3))
    with pytest.raises(KeyboardInterrupt):
        train(options(1e-3), show_progress=False)
    assert (tmp_path / "a" / "checkpoints" / "checkpoint-3").is_dir()
    monkeypatch.setattr(SFTTrainer, "training_step", step)
    capsys.readouterr()
    train(options(2e-3), show_progress=False)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["resumed"] is False and manifest["hyperparameters"]["learning_rate"] == 2e-3
    assert "training from the start" in capsys.readouterr().out


@pytest.mark.slow
def test_corrupt_or_mismatched_adapters_are_refused_in_one_line(tiny_adapter, tmp_path):
    import shutil

    folder, _ = tiny_adapter
    registry = tmp_path / "adapters"
    broken = registry / "economicus"
    shutil.copytree(folder, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not a tensor file")
    exe = Path(sys.executable).parent / "econalign"
    proc = subprocess.run([str(exe), "finetune", "evaluate", "--adapters", str(registry), "--small",
                           "--out", str(tmp_path / "eval")], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "economicus" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([str(exe), "finetune", "evaluate", "--adapters", str(registry),
                           "--adapter", "moralis-0.5"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no adapter 'moralis-0.5'" in proc.stderr


@pytest.mark.slow
def test_evaluation_reports_every_domain(tiny_model, tmp_path, browser):
    """`finetune evaluate`: the base model and the adapter on the held-out games, pricing and AV
    items, scores per domain (pricing: exact and within one grid step) and the AV choice curve
    beside the theory's step and Bonnefon et al.'s human shares, into the manifest. The tiny
    random model and an adapter trained on it (conftest.tiny_model): the scores' plumbing, not
    the embedded model's answers."""
    import pandas as pd

    from finetune.heldout import evaluate_adapters
    from finetune.registry import read_adapter_manifest
    from finetune.train import TrainOptions, train

    registry = tmp_path / "adapters"
    examples = make_mixed_examples(HomoEconomicus(), {"games": 8, "pricing": 4, "av": 4}, seed=5)
    write_jsonl(examples, tmp_path / "data.jsonl")
    train(TrainOptions(str(tmp_path / "data.jsonl"), str(registry / "economicus"), base=str(tiny_model), max_steps=4,
                       batch_size=4, logging_steps=1), show_progress=False)
    out = tmp_path / "eval"
    evaluate_adapters(registry, {"economicus": HomoEconomicus()}, out, base=tiny_model, small=True,
                      log=lambda *a: None, application_items=9)
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores.domain) == {"games", "pricing", "av"}
    assert set(scores.policy) == {"base", "economicus"}
    pricing = scores[scores.domain == "pricing"]
    assert (pricing.share_within_step >= pricing.share_equal).all() and pricing["items"].eq(9).all()
    curve = pd.read_csv(out / "choice_curve.csv", index_col=0)
    assert curve["theory economicus"].eq(0).all()            # homo economicus never swerves into a barrier
    assert curve.loc[[1, 10], "human (Bonnefon et al. 2016)"].tolist() == [0.23, 0.76]
    assert curve["economicus"].between(0, 1).all()
    evaluation = read_adapter_manifest(registry / "economicus")["evaluation"]
    assert set(evaluation["domains"]) == {"games", "pricing", "av"}
    assert len(evaluation["choice_curve"]["adapter"]) == 10
    assert (out / "choice_curve.png").stat().st_size > 0 and (out / "scores_by_feature.md").exists()
    # the evaluation folder's report: before/after per domain, the learning curve, the choice curve
    from browser import open_report
    from scenarios.report import write_report

    curve = pd.read_csv(out / "learning_curve.csv")
    assert set(curve.adapter) == {"economicus"}
    assert len(curve) == len(read_adapter_manifest(registry / "economicus")["loss_curve"])
    assert json.loads((out / "manifest.json").read_text())["job"] == "finetune evaluate"
    seen = open_report(browser(), write_report(out), tmp_path / "report-finetune.png")
    assert seen["titles"] == ["Before and after fine-tuning", "Learning curves", "AV choice curve after fine-tuning",
                              "The run"]
    assert seen["images"] == 3 and seen["broken"] == 0 and seen["errors"] == [] and seen["requests"] == []
    # --limit: at most N items of each domain, spread over the games, recorded with the scores
    from agents.errors import InputError

    limited = tmp_path / "limited"
    evaluate_adapters(registry, {"economicus": HomoEconomicus()}, limited, base=tiny_model, small=True,
                      log=lambda *a: None, limit=5)
    items = pd.read_parquet(limited / "items.parquet")
    assert items.groupby("policy").size().tolist() == [5, 5] and items.game.nunique() >= 3
    scores = pd.read_csv(limited / "scores.csv")
    assert scores[scores.domain != "games"]["items"].le(5).all()
    assert read_adapter_manifest(registry / "economicus")["evaluation"]["battery"]["limit"] == 5
    with pytest.raises(InputError, match="--limit must be a whole number"):
        evaluate_adapters(registry, {"economicus": HomoEconomicus()}, limited, small=True, limit=0)


@pytest.mark.slow
def test_probe_phase_continues_the_first_phase_and_is_cached(tmp_path, tiny_model):
    """Homo moralis trains in two phases: the mixed data, then Bonnefon et al.'s question from
    the first phase's adapter (finetune.recipes.PROBE_PHASE); the manifest records both phases
    and their summed time, and a rerun trains neither again (nor with the first phase moved to
    another folder: it is known by its weights). On the tiny random model (conftest.tiny_model)."""
    from agents.llm.models import model_hash
    from agents.records import file_sha256
    from finetune.pipeline import train_adapter
    from finetune.recipes import PROBE_PHASE
    from finetune.registry import read_adapter_manifest

    messages = []
    args = (HomoMoralis(kappa=0.5), {"games": 4, "pricing": 2, "av": 2}, 8,
            {"max_steps": 2, "batch_size": 4, "top_layers": 1}, tmp_path / "adapters" / "moralis-0.5",
            tmp_path / "out" / "data", tiny_model, model_hash(tiny_model), 0, "answer", messages.append)
    manifest = train_adapter(*args)
    first = tmp_path / "out" / "phase1" / "moralis-0.5"
    assert manifest["init_adapter_sha256"] == file_sha256(first / "adapter_model.safetensors")
    assert manifest["hyperparameters"]["init_adapter"] == str(first)
    assert {k: manifest["hyperparameters"][k] for k in PROBE_PHASE} == PROBE_PHASE
    assert manifest["situations"] == {"games": 4, "pricing": 2, "av": 2, "probe": 8}
    phases = manifest["phases"]
    assert [p["data"]["examples"] for p in phases] == [8, 8]
    assert manifest["train_seconds"] == pytest.approx(sum(p["train_seconds"] for p in phases), abs=0.2)
    assert read_adapter_manifest(tmp_path / "adapters" / "moralis-0.5") == manifest
    messages.clear()
    train_adapter(*args)
    assert len(messages) == 2 and all("up to date" in m for m in messages)
    shutil.copytree(tmp_path / "out", tmp_path / "moved")      # the first phase in another folder, same weights
    messages.clear()
    train_adapter(*args[:5], tmp_path / "moved" / "data", *args[6:])
    assert len(messages) == 2 and all("up to date" in m for m in messages)
    economicus = train_adapter(HomoEconomicus(), *args[1:4], tmp_path / "adapters" / "economicus", *args[5:])
    assert "phases" not in economicus and economicus["init_adapter_sha256"] is None


def test_an_adapter_of_an_older_recipe_is_told_apart_and_a_foreign_one_is_kept(tmp_path):
    """follows_recipe, which a study's train_adapters uses: an adapter the pipeline trained with
    another recipe is retrained (the llm_kappa study once kept rank-8 kappa adapters beside the
    rank-16 main-job one), also one whose second phase ran with other settings; one without the
    pipeline's manifest (someone's own) is left alone."""
    from finetune.recipes import PROBE_PHASE, follows_recipe, recipe
    from finetune.registry import write_adapter_manifest

    parts = recipe("moralis-0.25")
    current = {"situations": {**parts.counts, "probe": parts.probe},
               "hyperparameters": {**parts.options, **PROBE_PHASE}}
    write_adapter_manifest(tmp_path, current)
    assert parts.options["rank"] == 16 and follows_recipe(tmp_path, "moralis-0.25")
    write_adapter_manifest(tmp_path, {**current, "hyperparameters": {**current["hyperparameters"], "rank": 8}})
    assert not follows_recipe(tmp_path, "moralis-0.25")
    older_phase = {**current["hyperparameters"], "learning_rate": PROBE_PHASE["learning_rate"] / 2}
    write_adapter_manifest(tmp_path, {**current, "hyperparameters": older_phase})   # another second phase
    assert not follows_recipe(tmp_path, "moralis-0.25")
    write_adapter_manifest(tmp_path, {**current, "situations": {"games": 160}})
    assert not follows_recipe(tmp_path, "moralis-0.25")
    (tmp_path / "manifest.json").unlink()
    assert follows_recipe(tmp_path, "moralis-0.25")


def test_one_decision_says_which_adapters_get_the_second_phase(tmp_path):
    """Homo moralis with kappa <= 0.1 never swerves for N <= 10 (kappa > 1/N), so train_adapter
    gives it one phase; follows_recipe must then accept that one-phase adapter (it used to expect
    a second phase for every moralis kappa, so a study retrained such an adapter on every run)."""
    from agents.preferences import HomoEconomicus, HomoMoralis
    from finetune.recipes import follows_recipe, has_second_phase, recipe
    from finetune.registry import write_adapter_manifest

    parts = recipe("moralis-0.1")
    assert [has_second_phase(p, parts.counts, parts.probe)
            for p in (HomoMoralis(kappa=0.5), HomoMoralis(kappa=0.1), HomoEconomicus())] == [True, False, False]
    assert not has_second_phase(HomoMoralis(kappa=0.5), {**parts.counts, "av": 0}, parts.probe)
    write_adapter_manifest(tmp_path, {"situations": dict(parts.counts), "hyperparameters": dict(parts.options)})
    assert follows_recipe(tmp_path, "moralis-0.1")
    assert not follows_recipe(tmp_path, "moralis-0.5")     # the same one-phase manifest lacks its second phase


def test_extra_training_options_override_the_trainer_defaults(tmp_path):
    """`TrainOptions.extra` reaches TRL's SFTConfig and overrides the defaults set there (the
    batch order was passed twice before, so extra={"train_sampling_strategy": ...} failed)."""
    from finetune.objectives import sft_config
    from finetune.train import TrainOptions

    options = TrainOptions("data.jsonl", str(tmp_path / "adapter"), seed=3)
    default = sft_config(options, tmp_path / "checkpoints")
    assert (default.train_sampling_strategy, default.seed, default.save_steps) == ("group_by_length", 3, 10)
    options.extra = {"train_sampling_strategy": "random", "neftune_noise_alpha": 5.0}
    changed = sft_config(options, tmp_path / "checkpoints")
    assert (changed.train_sampling_strategy, changed.neftune_noise_alpha) == ("random", 5.0)


def test_heldout_games_carry_the_theory_of_any_kappa():
    """Regression: the battery's kappa grid is 0, 0.1, ..., 1, and adapters of kappa 0.25 or 0.75
    (the llm_kappa study) once failed their evaluation. Each held-out item carries their theory
    action; in the prisoner's dilemma homo moralis defects when kappa < (P - S) / (R - S) and
    cooperates when kappa > (T - R) / (T - P) (Alger & Weibull 2013, from the payoffs of C and D
    against C and against D weighted by 1 - kappa and kappa)."""
    from finetune.battery import KAPPAS
    from finetune.heldout import heldout_games

    assert 0.25 not in KAPPAS and 0.75 not in KAPPAS
    items = heldout_games([HomoEconomicus(), HomoMoralis(kappa=0.25), HomoMoralis(kappa=0.75)], small=True)
    assert items and all({0.25, 0.75} <= set(dict(i.moralis)) for i in items)
    dilemmas = [i for i in items if i.game == "prisoners-dilemma"]
    assert dilemmas
    for item in dilemmas:
        p = item.parameters
        defect_below, cooperate_above = (p["P"] - p["S"]) / (p["R"] - p["S"]), (p["T"] - p["R"]) / (p["T"] - p["P"])
        for kappa, action in dict(item.moralis).items():
            if kappa < min(defect_below, cooperate_above):
                assert action == "defect", (item.item_id, kappa)
            elif kappa > max(defect_below, cooperate_above):
                assert action == "cooperate", (item.item_id, kappa)


@pytest.mark.slow
def test_frozen_layer_cache_matches_the_full_forward_and_does_not_depend_on_the_batch(model_folder):
    """With the top k layers adapted, the trainer keeps each example's output of the frozen layers
    (computed alone, unpadded; finetune.fast_sft.FrozenLayerCache): the last hidden states equal the
    decoder's own forward on every real token (to float rounding), an example gets the same bits
    in any batch, and over the cache's memory limit nothing is kept."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.fast_sft import FrozenLayerCache, first_trained_layer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32, attn_implementation="eager")
    layers = model.config.num_hidden_layers
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], task_type="CAUSAL_LM",
                                                  layers_to_transform=[layers - 2, layers - 1],
                                                  layers_pattern="layers"))
    assert first_trained_layer(peft_model) == layers - 2
    examples = make_mixed_examples(HomoMoralis(kappa=0.5), {"games": 4, "pricing": 2, "av": 2}, seed=1)
    texts = [tokenizer.apply_chat_template(e["messages"], tokenize=False) for e in examples]
    decoder = peft_model.get_base_model().model

    def states(batch_texts, limit=None):
        """Last hidden states of a batch: the decoder's forward, and a new cache's."""
        cache = FrozenLayerCache(layers - 2, limit)
        batch = tokenizer(batch_texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            full = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           use_cache=False).last_hidden_state
            cached = cache.hidden_states(decoder, batch.input_ids, batch.attention_mask)
        return full, cached, batch.attention_mask.bool(), cache.outputs

    full, cached, real, frozen = states(texts[:4])
    assert cached.shape == full.shape and len(frozen) == len(set(texts[:4]))
    assert torch.allclose(cached[real], full[real], rtol=0, atol=1e-5 * float(full[real].abs().max()))
    assert not torch.equal(cached[real], torch.zeros_like(cached[real]))
    other_full, _, _, other_frozen = states([texts[0], *texts[4:]])   # the first example in another batch
    (shared,) = set(frozen) & set(other_frozen)
    assert other_full.shape[1] != full.shape[1] and torch.equal(frozen[shared], other_frozen[shared])
    _, over_limit, _, kept = states(texts[:4], limit=0)              # over its memory: computed, not kept
    assert torch.equal(over_limit, cached) and kept == {}
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_folder),
                                LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert first_trained_layer(peft_model) == 0    # every layer adapted: nothing to cache


def test_an_adapter_is_up_to_date_only_in_the_dtype_it_was_trained_in(tmp_path):
    """The pipeline retrains an adapter of another precision; a manifest written before device and
    dtype existed (`bf16` among its hyper-parameters) counts as float32 or bf16 as it says."""
    from dataclasses import asdict

    from agents.records import file_sha256
    from finetune.pipeline import _up_to_date
    from finetune.registry import write_adapter_manifest
    from finetune.train import TrainOptions

    data, folder = tmp_path / "d.jsonl", tmp_path / "a"
    data.write_text("{}\n")
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    auto, bf16 = (TrainOptions(str(data), str(folder), "base", dtype=d) for d in ("auto", "bfloat16"))
    hyper = {k: v for k, v in asdict(auto).items() if k not in ("data", "out", "base", "device", "dtype")}

    def recorded(**extra):
        write_adapter_manifest(folder, {"data": {"sha256": file_sha256(data)}, "base_model_sha256": "h",
                                        "init_adapter_sha256": None, "hyperparameters": hyper, **extra})

    recorded(device="cpu", dtype="float32")
    assert _up_to_date(folder, data, auto, "h") and not _up_to_date(folder, data, bf16, "h")
    recorded(device="cpu", dtype="bfloat16")
    assert not _up_to_date(folder, data, auto, "h") and _up_to_date(folder, data, bf16, "h")
    hyper["bf16"] = False
    recorded()
    assert _up_to_date(folder, data, auto, "h") and not _up_to_date(folder, data, bf16, "h")
    hyper["bf16"] = True
    recorded()
    assert not _up_to_date(folder, data, auto, "h") and _up_to_date(folder, data, bf16, "h")
