"""`econalign serve` refuses adapters vLLM would reject, with one line naming the reason."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.llm.adapters import AdapterError, discover_adapters, inspect_adapter
from agents.llm.server import server_command
from conftest import make_adapter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def good(model_folder, tmp_path_factory):
    return make_adapter(model_folder, tmp_path_factory.mktemp("good") / "good", seed=3)


def _variant(good: Path, tmp_path: Path, name: str, **changes) -> Path:
    import shutil
    out = tmp_path / name
    shutil.copytree(good, out)
    config = json.loads((out / "adapter_config.json").read_text())
    config.update(changes)
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def test_good_adapter_passes_and_sets_rank(good, model_folder):
    info = inspect_adapter(good, model_folder)
    assert info.rank == 8
    cmd = server_command("python", model_folder, [info], "127.0.0.1", 8000)
    assert cmd[cmd.index("--max-lora-rank") + 1] == "8" and f"good={good}" in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


@pytest.mark.parametrize("changes,reason", [
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"use_dora": True}, "DoRA"),
    ({"bias": "all"}, "bias"),
    ({"init_lora_weights": "pissa"}, "modifies the base"),
    ({"peft_type": "IA3"}, "LORA"),
])
def test_features_vllm_rejects(good, model_folder, tmp_path, changes, reason):
    with pytest.raises(AdapterError, match=reason):
        inspect_adapter(_variant(good, tmp_path, "bad", **changes), model_folder)


def test_rank_above_limit(model_folder, tmp_path):
    big = make_adapter(model_folder, tmp_path / "big", seed=4, rank=32)
    with pytest.raises(AdapterError, match="rank 32 is above the limit 16"):
        inspect_adapter(big, model_folder, max_rank=16)


def test_adapter_of_another_base_model(good, model_folder, tmp_path):
    other = tmp_path / "other-base"
    other.mkdir()
    config = json.loads((model_folder / "config.json").read_text())
    config["hidden_size"] = 1024
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="another base model"):
        inspect_adapter(good, other)
    stamped = _variant(good, tmp_path, "stamped")
    (stamped / "manifest.json").write_text(json.dumps({"base_model_sha256": "0" * 64}))
    with pytest.raises(AdapterError, match="trained on base model 000000000000"):
        discover_adapters(stamped, model_folder)


def test_an_adapter_named_for_another_preference_than_it_was_trained_for(good, model_folder, tmp_path):
    """A homo economicus adapter copied to `moralis-0.5/` would give moralis agents economicus
    weights: refused, naming the manifest's preference; names that are no preference pass."""
    misnamed = _variant(good, tmp_path, "moralis-0.5")
    (misnamed / "manifest.json").write_text(json.dumps({"preference": "economicus"}))
    with pytest.raises(AdapterError, match="adapter moralis-0.5: its manifest says it was trained for economicus"):
        inspect_adapter(misnamed, model_folder)
    named = _variant(good, tmp_path, "moralis-0.50")
    (named / "manifest.json").write_text(json.dumps({"preference": "moralis-0.5"}))
    assert inspect_adapter(named, model_folder).name == "moralis-0.50"
    custom = _variant(good, tmp_path, "my-adapter")
    (custom / "manifest.json").write_text(json.dumps({"preference": "economicus"}))
    assert inspect_adapter(custom, model_folder).name == "my-adapter"


def test_corrupt_weights(good, model_folder, tmp_path):
    broken = _variant(good, tmp_path, "corrupt")
    (broken / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        inspect_adapter(broken, model_folder)


def test_serve_cli_refuses_in_one_line(good, model_folder, tmp_path):
    bad = tmp_path / "adapters"
    bad.mkdir()
    _variant(good, bad, "saver", modules_to_save=["embed_tokens"])
    exe = Path(sys.executable).parent / "econalign"
    proc = subprocess.run([str(exe), "serve", "--model", str(model_folder), "--adapters", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "modules_to_save" in lines[0] and "Traceback" not in proc.stderr


def test_the_in_process_backend_refuses_an_adapter_of_another_base_model(good, model_folder, tmp_path):
    """The in-process backend checks an adapter as the server does: a manifest naming another
    base model's hash is refused in one line before anything loads."""
    from agents.llm.backend import BackendError
    from agents.llm.transformers_backend import TransformersBackend

    foreign = _variant(good, tmp_path, "foreign")
    (foreign / "manifest.json").write_text(json.dumps({"base_model_sha256": "0" * 64}))
    with pytest.raises(BackendError, match="trained on base model 000000000000"):
        TransformersBackend(model_folder, adapters={"foreign": foreign})
