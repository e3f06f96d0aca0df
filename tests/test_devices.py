"""Where the in-process model runs: device and dtype as users write them (agents.llm.devices), from
the Python API, a scenario's [llm] and the command line; bad values are one-line errors, exit 2."""
import pytest
import torch

from agents.errors import InputError
from agents.llm.devices import resolve_placement
from scenarios.cli import main


def fake_gpus(monkeypatch, count: int, bf16: bool = True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_auto_is_the_cpu_in_float32_without_a_gpu(monkeypatch):
    fake_gpus(monkeypatch, 0)
    assert resolve_placement().as_dict() == {"device": "cpu", "dtype": "float32"}
    assert resolve_placement("cpu", "bfloat16").as_dict() == {"device": "cpu", "dtype": "bfloat16"}


def test_auto_is_the_first_gpu_in_bf16_where_there_is_one(monkeypatch):
    fake_gpus(monkeypatch, 2)
    assert resolve_placement().as_dict() == {"device": "cuda:0", "dtype": "bfloat16"}
    assert resolve_placement("cuda").device == "cuda:0" and resolve_placement("cuda:1").device == "cuda:1"
    assert resolve_placement("cpu").as_dict() == {"device": "cpu", "dtype": "float32"}
    assert resolve_placement("auto", "float32").dtype == "float32"
    with pytest.raises(InputError, match=r"has 2 CUDA GPU\(s\), cuda:0..cuda:1"):
        resolve_placement("cuda:2")
    fake_gpus(monkeypatch, 1, bf16=False)                       # a GPU without bf16 (before Ampere)
    assert resolve_placement().dtype == "float16"


def test_a_named_gpu_without_one_is_refused(monkeypatch):
    fake_gpus(monkeypatch, 0)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_placement(device)


@pytest.mark.parametrize("device, dtype, wanted", [("gpu", "auto", "device must be one of"),
                                                    ("cuda:x", "auto", "device must be one of"),
                                                    ("", "auto", "device must be one of"),
                                                    ("auto", "fp8", "dtype must be one of"),
                                                    ("auto", "float64", "dtype must be one of")])
def test_bad_names_are_refused(device, dtype, wanted):
    with pytest.raises(InputError, match=wanted):
        resolve_placement(device, dtype)


def _scenario(tmp_path, llm: str, name: str = "s"):
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "s"\n[llm]\n{llm}\n[[firm]]\ntype = "llm"\npreference = "base"\n'
                    '[[firm]]\ntype = "llm"\npreference = "base"\n')
    return path


@pytest.mark.parametrize("llm, wanted", [('device = "tpu"', "[llm] device must be one of auto, cpu, cuda, cuda:N"),
                                         ('dtype = "half"', "[llm] dtype must be"),
                                         ('device = 0', "[llm] device must be a string")])
def test_bad_llm_section_values_are_one_line_errors(tmp_path, capsys, llm, wanted):
    code = main(["market", "run", str(_scenario(tmp_path, llm)), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and wanted in err and len(err.strip().splitlines()) == 1


def test_a_gpu_named_on_a_machine_without_one_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """From the scenario, from the command line (which overrides it) and for training."""
    fake_gpus(monkeypatch, 0)
    runs = [["market", "run", str(_scenario(tmp_path, 'device = "cuda:1"', "a")), "--out", str(tmp_path / "a")],
            ["market", "run", str(_scenario(tmp_path, "", "b")), "--out", str(tmp_path / "b"), "--device", "cuda"],
            ["games", "eval", "--small", "--device", "cuda:0", "--out", str(tmp_path / "c")]]
    for argv in runs:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no CUDA GPU" in err[0], argv
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [], "meta": {}}\n')
    assert main(["finetune", "train", "--data", str(data), "--out", str(tmp_path / "t"), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_the_command_line_overrides_the_scenario(tmp_path):
    from scenarios.settings_files import load_scenario, placement_overrides

    class Args:
        device, dtype = "cpu", None

    s = load_scenario(_scenario(tmp_path, 'device = "cuda:1"\ndtype = "bfloat16"'), placement_overrides(Args()))
    assert (s.llm.device, s.llm.dtype) == ("cpu", "bfloat16")
    with pytest.raises(SystemExit) as stop:
        main(["market", "run", "x", "--out", "o", "--device", "gpu"])
    assert stop.value.code == 2


def test_training_options_take_device_and_dtype(tmp_path):
    from finetune.objectives import sft_config
    from finetune.train import TrainOptions

    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    with pytest.raises(InputError, match="dtype must be one of"):
        TrainOptions(str(data), str(tmp_path / "a"), dtype="bf16").check()
    config = sft_config(TrainOptions(str(data), str(tmp_path / "a"), dtype="bfloat16"), tmp_path / "c", False)
    assert config.bf16 and not config.fp16 and config.use_cpu
    config = sft_config(TrainOptions(str(data), str(tmp_path / "a")), tmp_path / "c", False)
    assert not config.bf16 and config.use_cpu
