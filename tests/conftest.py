"""Shared fixtures: the embedded model (prepared once) and LoRA adapters made by the tests."""
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_server import fake_server  # noqa: F401  (a misbehaving OpenAI-compatible server, tests/fake_server.py)

from agents.llm.backend import BackendError, CallCounter
from browser import browser  # noqa: F401  (the fixture of the browser tests, tests/browser.py)

pytest_plugins = ["budget", "parallel"]   # the time budget printed at the end of a run; the groups of xdist workers


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder NAME that `build(folder)` fills, built once for the whole run: pytest-xdist's
    workers share their base temporary folder's parent, and the first worker to ask builds the
    folder while the others wait on its lock (NAME.built marks it done)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / f"{name}.built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (root / f"{name}.built").touch()
    return folder


@pytest.fixture(scope="session")
def model_folder() -> Path:
    from agents.llm.models import prepare

    return prepare()  # idempotent: a cached folder after the first time


def _gpu_check():
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_LAYERS = 2   # the decoder layers of the benchmarks' tiny shape (benchmarks/gpu_check.py SHAPES)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, model_folder) -> Path:
    """A random-weight Llama of the benchmarks' tiny shape (benchmarks/gpu_check.py: width 64,
    TINY_LAYERS layers) on the embedded model's tokenizer and chat template, saved as a model
    folder: for the tests that check plumbing (losses equal their formulas, a resumed training
    equals the uninterrupted one), not the embedded model's answers."""
    from transformers import AutoTokenizer

    from agents.llm.devices import resolve_placement

    gpu_check = _gpu_check()
    assert gpu_check.SHAPES["tiny"]["num_hidden_layers"] == TINY_LAYERS

    def build(folder):
        tokenizer = AutoTokenizer.from_pretrained(model_folder)
        gpu_check.build("tiny", tokenizer, resolve_placement("cpu", "float32")).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return built_once(tmp_path_factory, "tiny-model", build)


@pytest.fixture(scope="session")
def backend(model_folder):
    from agents.llm.transformers_backend import TransformersBackend

    return TransformersBackend(model_folder)


def make_adapter(base: Path, out: Path, seed: int, rank: int = 8, **config) -> Path:
    """A LoRA adapter with random, nonzero weights (init_lora_weights=False), saved as PEFT does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM", **config)
    peft_model = get_peft_model(model, lora)  # PEFT's random init: changes answers, keeps text
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def make_adapters(base: Path, root: Path, seeds: dict[str, int]) -> Path:
    """A folder of adapters ({name: seed}), each with random weights (make_adapter)."""
    for name, seed in seeds.items():
        make_adapter(base, root / name, seed=seed)
    return root


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory, model_folder) -> Path:
    return built_once(tmp_path_factory, "adapters",
                      lambda folder: make_adapters(model_folder, folder, {"alpha": 1, "beta": 2}))


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, model_folder):
    """An economicus adapter trained for 6 steps on 16 mixed examples (games, pricing, AVs) of the
    embedded model, its top 15 layers as the main job trains them, and those examples: (folder, examples).
    Trained once for the whole run (built_once: the workers share it).
    Slow: six LoRA steps of the embedded model (about 40 s on one core)."""
    from agents.preferences import HomoEconomicus
    from finetune.dataset import make_mixed_examples, write_jsonl
    from finetune.train import TrainOptions, train

    examples = make_mixed_examples(HomoEconomicus(), {"games": 8, "pricing": 4, "av": 4}, seed=5)

    def build(root):
        write_jsonl(examples, root / "data.jsonl")
        train(TrainOptions(str(root / "data.jsonl"), str(root / "adapters" / "economicus"),
                           max_steps=6, batch_size=4, learning_rate=1e-3, save_steps=3, top_layers=15),
              show_progress=False)

    return built_once(tmp_path_factory, "tiny", build) / "adapters" / "economicus", examples


@pytest.fixture(scope="session")
def adapter_backend(model_folder, adapter_dir):
    from agents.llm.transformers_backend import TransformersBackend

    return TransformersBackend(model_folder, adapters={"alpha": adapter_dir / "alpha",
                                                       "beta": adapter_dir / "beta"})


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class CountingBackend:
    """Wraps a backend and counts its batched calls."""

    def __init__(self, inner):
        self.inner, self.calls, self.sizes, self.name = inner, 0, [], "counting"
        self.model_path = inner.model_path

    def generate(self, requests):
        self.calls += 1
        self.sizes.append(len(requests))
        return self.inner.generate(requests)

    def choose(self, requests):
        self.calls += 1
        self.sizes.append(len(requests))
        return self.inner.choose(requests)


class HashBackend:
    """A deterministic stand-in for a model: each request's option probabilities come from a
    hash of what it asks (so different histories get different answers); fails after
    `fail_after` calls when given (a server dying mid-run)."""

    name = "hash"

    def __init__(self, fail_after: int | None = None):
        self.counter, self.fail_after = CallCounter(), fail_after

    @property
    def calls(self) -> int:
        return self.counter.calls

    def choose(self, requests):
        if self.fail_after is not None and self.counter.calls >= self.fail_after:
            raise BackendError("the server went away")
        self.counter.record("choose", len(requests))
        out = []
        for r in requests:
            digest = hashlib.sha256(r.fingerprint("choose").encode()).digest()
            weights = np.frombuffer(digest, dtype=np.uint8)[:len(r.options)].astype(float) + 1.0
            out.append(weights ** 3 / (weights ** 3).sum())
        return out
