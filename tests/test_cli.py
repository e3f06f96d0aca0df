"""The `econalign theory` contract: JSON shape, published numbers, one-line errors."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scenarios.cli import main

ROLES = {"dictator": ["dictator"], "ultimatum": ["proposer", "responder"],
         "trust": ["investor", "trustee"], "prisoners-dilemma": ["player"],
         "public-goods": ["player"], "bertrand": ["firm"]}


def _econalign():
    exe = Path(sys.executable).parent / "econalign"
    return [str(exe)] if exe.exists() else [shutil.which("econalign") or "econalign"]


def run_json(capsys, *args):
    assert main(["theory", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_console_script_gives_published_bertrand_numbers():
    out = subprocess.run(_econalign() + ["theory", "bertrand", "--json"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["nash_price"] == pytest.approx(1.472927, abs=1e-4)
    assert result["monopoly_price"] == pytest.approx(1.924981, abs=1e-4)
    assert result["strategy"]["firm"] == pytest.approx(1.472927, abs=1e-4)
    assert result["delta"] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("game", list(ROLES))
def test_every_game_reports_its_roles(capsys, game):
    result = run_json(capsys, game, "--kappa", "0.6")
    assert list(result["strategy"]) == ROLES[game]
    assert result["preference"] == "moralis" and result["kappa"] == 0.6
    assert isinstance(result["utility"], float)


def test_moralis_kappa_one_prices_at_monopoly_in_fish_units(capsys):
    result = run_json(capsys, "bertrand", "--kappa", "1", "--set", "price_scale=3.2",
                      "--set", "quantity_scale=100")
    assert result["strategy"]["firm"] == pytest.approx(1.924981 * 3.2, abs=1e-4)
    assert result["monopoly_price"] == pytest.approx(1.924981 * 3.2, abs=1e-4)
    assert result["delta"] == pytest.approx(1.0, abs=1e-4)


def test_set_parameters_reach_the_game(capsys):
    result = run_json(capsys, "public-goods", "--kappa", "0.2", "--set", "players=8",
                      "--set", "mpcr=0.5", "--set", "endowment=30")
    # threshold (1 - m) / (m (n - 1)) = 1/7 < 0.2: contribute everything
    assert result["strategy"] == {"player": 30.0}
    pd = ["prisoners-dilemma", "--set", "T=10", "--set", "R=3", "--set", "P=1", "--set", "S=0"]
    # thresholds: against a defector (P-S)/(R-S) = 1/3, against a cooperator (T-R)/(T-P) = 7/9
    assert run_json(capsys, *pd, "--kappa", "0.3")["strategy"] == {"player": "defect"}
    assert run_json(capsys, *pd, "--kappa", "0.8")["strategy"] == {"player": "cooperate"}
    between = run_json(capsys, *pd, "--kappa", "0.5")
    assert between["status"] == "none"  # mixed: (k(T-P) - (P-S)) / ((1+k)(S+T-R-P)) = 3.5/9
    assert between["strategy"]["player"]["cooperate"] == pytest.approx(3.5 / 9)


def test_readable_table(capsys):
    assert main(["theory", "trust", "--kappa", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "investor" in out and "trustee" in out and "{" not in out


@pytest.mark.parametrize("args,needle", [
    (["bertrand", "--kappa", "1.5"], "kappa"),
    (["bertrand", "--set", "mu=0"], "mu"),
    (["chess"], "unknown game"),
    (["dictator", "--set", "players=3"], "players"),
    (["trust", "--set", "multiplier=-2"], "multiplier"),
    (["public-goods", "--set", "players=2.5"], "players"),
    (["bertrand", "--set", "a=2,3,4"], "a "),
    (["dictator", "--set", "endowment"], "NAME=VALUE"),
    (["dictator", "--preference", "moralis"], "kappa"),
    (["dictator", "--preference", "economicus", "--kappa", "0.4"], "kappa"),
    (["dictator", "--utility", "cubic"], "utility"),
    (["dictator", "--kappa", "abc"], "kappa"),
    (["prisoners-dilemma", "--set", "S=-2", "--utility", "log"], "> -1"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    proc = subprocess.run(_econalign() + ["theory", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert needle in lines[0]


@pytest.mark.slow
def test_the_wheel_ships_every_bundled_scenario_study_and_data_file(tmp_path):
    """A non-editable install has the bundled scenarios, studies and reference data: the built
    wheel holds every file the package folders keep beside the code."""
    import zipfile

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"          # a copy: a stale build/ folder in the tree would fill the wheel
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(".*", "build", "outputs", "adapters", "runs",
                                                                 "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path)], check=True, capture_output=True, timeout=600)
    wheel, = tmp_path.glob("econalign-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    bundled = [p.relative_to(root).as_posix() for pattern in ("scenarios/markets/*.toml", "scenarios/avs/*.toml",
                                                              "scenarios/studies/*.toml", "finetune/data/*.json",
                                                              "finetune/data/*.md", "scenarios/templates/*.j2",
                                                              "scenarios/native/*.c")
               for p in root.glob(pattern)]
    assert any(p.startswith("scenarios/studies/") for p in bundled)
    assert {"scenarios/templates/report.html.j2", "scenarios/native/loopback_bind.c"} <= set(bundled)
    assert sorted(set(bundled) - shipped) == []


def test_finetune_train_flags_come_from_train_options(tmp_path, capsys):
    """`finetune train`'s flags are TrainOptions' fields with its defaults (written once); bad
    values are one line and exit code 2."""
    from dataclasses import fields

    from finetune.train import TRAIN_FLAGS, TrainOptions
    from scenarios.cli import build_parser

    args = build_parser().parse_args(["finetune", "train", "--data", "d.jsonl", "--out", "a"])
    defaults = {f.name: f.default for f in fields(TrainOptions)}
    assert {name: getattr(args, name) for name in TRAIN_FLAGS} == {name: defaults[name] for name in TRAIN_FLAGS}
    assert args.frozen_cache is True      # a switch that is on by default turns off with --no-...
    args = build_parser().parse_args(["finetune", "train", "--data", "d", "--out", "a", "--lr", "1e-3", "--dtype",
                                      "bfloat16", "--device", "cpu", "--no-frozen-cache"])
    assert args.learning_rate == 1e-3 and (args.dtype, args.device) == ("bfloat16", "cpu")
    assert args.frozen_cache is False
    data = tmp_path / "d.jsonl"
    data.write_text("")
    for extra, needle in ((["--rank", "0"], "rank must be 1..64"), ([], "holds no examples")):
        assert main(["finetune", "train", "--data", str(data), "--out", str(tmp_path / "a"), *extra]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1


def test_each_command_comes_from_the_module_that_owns_it():
    """Every command is registered by its module (scenarios.cli.OWNERS) and runs a function of it."""
    import argparse

    from scenarios.cli import OWNERS, build_parser

    def commands(parser, prefix=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, (*prefix, name))
        if parser.get_default("run") is not None:
            yield " ".join(prefix), parser.get_default("run").__module__

    found = dict(commands(build_parser()))
    assert found == {"theory": "scenarios.theory", "models prepare": "agents.llm.models",
                     "serve": "scenarios.serve", "games eval": "scenarios.evaluation",
                     "finetune data": "finetune.dataset", "finetune train": "finetune.train",
                     "finetune evaluate": "finetune.pipeline", "finetune pipeline": "finetune.pipeline",
                     "market run": "scenarios.market", "av run": "scenarios.av", "study run": "scenarios.study",
                     "viz": "simulation.viz_server", "transfer": "scenarios.transfer", "demo": "scenarios.demo",
                     "report": "scenarios.report"}
    assert set(found.values()) == set(OWNERS)


def test_errors_map_to_exit_codes_in_one_place():
    """User input (a value, file, model or adapter that is wrong) exits 2; a backend, server or
    solver that fails exits 1; anything else is a bug and keeps its traceback."""
    from agents.llm.adapters import AdapterError
    from agents.llm.backend import BackendError
    from agents.llm.models import ModelError
    from agents.llm.server import ServerError
    from scenarios.cli import exit_code
    from scenarios.settings_errors import ConfigError
    from scenarios.theory import InputError

    errors = {InputError("x"): 2, ConfigError("x"): 2, ModelError("x"): 2, AdapterError("x"): 2,
              BackendError("x"): 1, ServerError("x"): 1, RuntimeError("did not converge"): 1,
              KeyError("x"): None, TypeError("x"): None}
    assert {type(e).__name__: exit_code(e) for e in errors} == {type(e).__name__: c for e, c in errors.items()}


def test_json_records_are_written_whole_with_plain_numbers(tmp_path):
    from agents.records import file_sha256, write_json

    path = write_json(tmp_path / "sub" / "summary.json", {"delta": np.float64(0.5), "n": np.int64(3),
                                                          "path": tmp_path})
    assert json.loads(path.read_text()) == {"delta": 0.5, "n": 3, "path": str(tmp_path)}
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]      # no temporary file left
    import hashlib
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
