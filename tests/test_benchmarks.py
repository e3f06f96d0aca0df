"""The benchmark scripts start (their imports and arguments hold) and refuse bad arguments in
one line with exit code 2 before any work; the sweep's curve is drawn."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          cwd=BENCHMARKS.parent)


def test_every_benchmark_is_found():
    assert {p.stem for p in SCRIPTS} >= {"llm_throughput", "qlearning", "market_step", "llm_study", "train_speed",
                                        "finetune_sweep", "domain_split", "pricing_curve", "frozen_cache",
                                        "data_seeds", "adapter_rank", "gpu_check"}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_help_runs(path):
    done = script(str(path), "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


@pytest.mark.parametrize("args, wanted", [
    (("pricing_curve.py", "--sizes", "0,64"), "--sizes: must be integers >= 1"),
    (("pricing_curve.py", "--seeds", "a"), "--seeds: must be integers >= 0"),
    (("pricing_curve.py", "--preference", "moralis-2"), "preference must be economicus or moralis-K"),
    (("frozen_cache.py", "--preference", "altruist"), "preference must be economicus or moralis-K"),
    (("data_seeds.py", "--seeds", "0,-1"), "--seeds: must be integers >= 0"),
    (("adapter_rank.py", "--ranks", "0,8"), "--ranks: must be integers >= 1"),
    (("adapter_rank.py", "--ranks", "8,128"), "--ranks: at most 64"),
    (("adapter_rank.py", "--probe-lr", "1e-4,fast"), "--probe-lr: must be positive numbers"),
    (("adapter_rank.py", "--probe-lr", "0"), "--probe-lr: must be positive numbers"),
    (("domain_split.py", "--sequential", "1e-4:step"), "the schedule must be constant, cosine or linear"),
    (("domain_split.py", "--sequential", "fast:constant"), "the learning rate must be a number"),
    (("finetune_sweep.py", "--run", "examples=160", "--run", "colour=red"), "unknown key 'colour'"),
    (("finetune_sweep.py", "--run", "examples=many"), "examples must be a number"),
    (("gpu_check.py", "--periods", "0"), "--sessions and --periods must be >= 1"),
    (("gpu_check.py", "--device", "tpu"), "device must be one of auto, cpu, cuda, cuda:N"),
    (("gpu_check.py", "--dtype", "fp8"), "dtype must be one of"),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
def test_bad_benchmark_arguments_are_one_line_errors(args, wanted, tmp_path):
    done = script(str(BENCHMARKS / args[0]), *args[1:], "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert wanted in lines[-1] and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()        # refused before any work


def test_sweep_curve_is_drawn(tmp_path):
    spec = importlib.util.spec_from_file_location("finetune_sweep", BENCHMARKS / "finetune_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    rows = [{"preference": "moralis", "base": 0.35, "style": "answer", "top_layers": 0, "epochs": 2.0, "rank": 8,
             "seed": 0, "examples": n, "share": share} for n, share in ((40, 0.30), (80, 0.55), (160, 0.80))]
    sweep.plot_curve(rows, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_the_cpu_at_a_tiny_size(tmp_path):
    """The GPU check's CPU mode: the lock-step curve (one backend call per period whatever the
    sessions), the sequential runner deciding the same prices, the main job's two adapters
    trained on the random-weight model, one table and the JSON."""
    import json

    done = script(str(BENCHMARKS / "gpu_check.py"), "--tiny", "--out", str(tmp_path / "gpu.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads((tmp_path / "gpu.json").read_text())
    assert found["machine"]["device"] and (found["machine"]["dtype"], found["periods"]) == ("float32", 2)
    tiny = found["shapes"]["tiny"]
    assert [r["sessions"] for r in tiny["curve"]] == [1, 4, 16]
    assert all(r["calls"] == 2 and 0 < r["forward_share"] < 1 and r["host_ms_per_request"] > 0 for r in tiny["curve"])
    assert tiny["sequential"]["identical_prices"] is True and tiny["sequential"]["sessions"] == 4
    trained = tiny["training"]
    assert {"economicus", "moralis-0.5"} <= set(trained) and trained["moralis-0.5"]["device"] == "cpu"
    assert "sess-periods/s" in done.stdout and "identical prices: True" in done.stdout
