"""The training recipe of each preference: examples per situation, epochs, adapted layers and LoRA
rank of the first phase, and the second phase (PROBE_PHASE) on Bonnefon et al.'s question for a
preference whose AV answer depends on the number of pedestrians. Chosen on the embedded model
within the main job's 10-minute training budget for both adapters (docs/finetune_experiments.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agents.preferences import from_name
from finetune.av_data import make_probe_examples
from finetune.dataset import SITUATIONS
from finetune.registry import read_adapter_manifest
from finetune.train import BEFORE_OBJECTIVES

# `probe`: examples of the second phase (PROBE_PHASE), which starts from the first phase's adapter;
# the other keys are TrainOptions' (`objective` among them: finetune.objectives; default sft)
RECIPES = {"economicus": {"games": 128, "pricing": 64, "av": 32, "probe": 0, "epochs": 2.0, "top_layers": 15},
           "moralis": {"games": 160, "pricing": 64, "av": 96, "probe": 192, "epochs": 2.0, "top_layers": 15,
                       "rank": 16, "alpha": 32}}
# a low constant learning rate, at which the count is learnt on every data seed (docs/finetune_experiments.md)
PROBE_PHASE = {"learning_rate": 2e-4, "schedule": "constant", "epochs": 2.0}


@dataclass(frozen=True)
class Recipe:
    """A preference's recipe (RECIPES): examples per situation, second-phase examples (`probe`)
    and the training options of both phases."""
    counts: dict
    probe: int
    options: dict


def recipe(name: str) -> Recipe:
    """The recipe of preference `name` (economicus, moralis or moralis-K: kappa shares moralis's)."""
    parts = RECIPES[name.partition("-")[0]]
    return Recipe(counts={k: parts[k] for k in SITUATIONS}, probe=parts["probe"],
                  options={k: v for k, v in parts.items() if k not in (*SITUATIONS, "probe")})


def follows_recipe(folder: Path, name: str) -> bool:
    """Whether the adapter in `folder` was trained by this pipeline with preference `name`'s recipe
    as RECIPES gives it now (its examples per situation and training options); an adapter without
    the pipeline's manifest is someone's own and counts as following it."""
    manifest = read_adapter_manifest(folder)
    if "hyperparameters" not in manifest:
        return True
    parts = recipe(name)
    two_phases = has_second_phase(from_name(name), parts.counts, parts.probe)
    wanted = {**parts.counts, **({"probe": parts.probe} if two_phases else {})}
    options = {**parts.options, **PROBE_PHASE} if two_phases else parts.options
    recorded = {**BEFORE_OBJECTIVES, **manifest["hyperparameters"]}
    return manifest.get("situations") == wanted and all(recorded.get(k) == v for k, v in options.items())


def has_second_phase(pref, counts: dict[str, int], probe: int) -> bool:
    """Whether `pref`'s adapter gets the second phase: `probe` examples asked for, AV situations
    trained, and an answer to Bonnefon et al.'s question that depends on N (not for homo
    economicus, nor homo moralis with kappa <= 0.1, which never swerves for N <= 10)."""
    return bool(probe and counts.get("av") and make_probe_examples(pref, 2))


def situation_counts(name: str, situations: dict, games: int | None = None) -> dict[str, int]:
    """Examples per situation for preference `name`: the given counts, else the recipe's
    (`games` overrides the games count)."""
    default = recipe(name).counts
    counts = {k: (n if n is not None else default[k]) for k, n in situations.items() if k in SITUATIONS}
    if games is not None and "games" in counts:
        counts["games"] = games
    return counts
