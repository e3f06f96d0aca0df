"""The research configuration measured on one GPU (or, small, on the CPU): lock-step LLM market
sessions through the in-process backend for models of real size, their share of wall time in
forward passes, LoRA training speed and peak GPU memory. One table, and JSON with --out.

Models are random-weight models of the shapes named (a forward pass costs the same whatever the
weights' values, so nothing is downloaded), with the embedded model's tokenizer:
    135m  the embedded model's own config (SmolLM2-135M: 30 layers, width 576)
    1.7b  a Llama-shaped 1.7B model (SmolLM2-1.7B: 24 layers, width 2048)
    8b    a Llama-3-8B-shaped model (32 layers, width 4096, 8 KV heads, vocabulary 128,256)
    tiny  2 layers of width 64 (the CPU check the tests run)

For each shape: the bundled `llm_base` duopoly (Calvano's grid through `choose`, seeded
sampling, memory 3) for S sessions x P periods in lock-step (one backend call per period for
every firm of every session), session-periods per second and the forward passes' share of the
wall time (timers around every forward pass, the device synchronised); at --sequential-at
sessions the one-session-at-a-time runner too, its ratio and whether the prices are identical.
Training: the main job's two adapters (finetune.recipes' recipes, finetune.pipeline's data, both phases) on the
135m shape, and --train-steps steps of the economicus first phase on the 1.7b shape.

    python benchmarks/gpu_check.py [--shapes 135m 1.7b 8b] [--sessions 1 4 16 64 256]
                                   [--periods 10] [--sequential-at 16] [--out gpu_check.json]
    python benchmarks/gpu_check.py --tiny          # the CPU check: tiny shape, small sizes

On the lent H200 machine (Python 3.12, torch and transformers, no registry): carry the wheels of
the project's other dependencies (mesa, pydantic, pandas, pyarrow, scipy, numba, trl, peft,
datasets, ... for cp312; see the device tool's README) and the embedded tokenizer folder
(--tokenizer). Run it alone: any other job changes the figures.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {   # LlamaConfig fields; the vocabulary is the tokenizer's unless given
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "tie_word_embeddings": True},
    "135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "tie_word_embeddings": True},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "num_key_value_heads": 32, "tie_word_embeddings": True},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "tie_word_embeddings": False, "vocab_size": 128256},
}
TARGETS = {"135m": 300, "1.7b": 100, "8b": 40}      # session-periods/s at 64 sessions (issue 36)


def fail(message: str) -> None:
    print(f"gpu_check.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def build(shape: str, tokenizer, placement):
    """A random-weight causal LM of `shape`, built on the device in the placement's dtype."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = {"vocab_size": len(tokenizer), "max_position_embeddings": 8192, "bos_token_id": tokenizer.bos_token_id,
              "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **SHAPES[shape]}
    torch.manual_seed(0)
    with torch.device(placement.device):
        model = LlamaForCausalLM(LlamaConfig(**fields)).to(placement.torch_dtype())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


class ForwardTimer:
    """Wall seconds inside the backend's forward passes and the vocabulary log-softmax of the
    options' tokens (the device synchronised at both ends): the model's arithmetic; the rest of
    the wall time is host work (prompts, tokens, the market, the data)."""

    def __init__(self, backend):
        import torch

        self.seconds = 0.0
        sync = torch.cuda.synchronize if backend.placement.on_gpu else (lambda: None)

        def timed(original):
            def run(*args, **kwargs):
                sync()
                start = time.perf_counter()
                out = original(*args, **kwargs)
                sync()
                self.seconds += time.perf_counter() - start
                return out
            return run

        backend._forward = timed(backend._forward)
        backend._vocab_logprobs = timed(backend._vocab_logprobs)


def lockstep_curve(backend, sessions: list[int], periods: int, sequential_at: int | None) -> dict:
    from llm_study import run as study_run

    timer = ForwardTimer(backend)
    study_run(backend, 1, 1, True)                                   # warm-up (kernels, caches)
    rows = []
    for n in sessions:
        timer.seconds = 0.0
        seconds, calls, prices = study_run(backend, n, periods, True)
        rows.append({"sessions": n, "seconds": round(seconds, 3), "calls": calls,
                     "session_periods_per_s": round(n * periods / seconds, 2),
                     "forward_share": round(timer.seconds / seconds, 3),
                     "host_ms_per_request": round(1000 * (seconds - timer.seconds) / (2 * n * periods), 2)})
        if n == sequential_at:
            lock_prices = prices
    out = {"curve": rows}
    if sequential_at:
        if sequential_at not in sessions:
            lock_s, _, lock_prices = study_run(backend, sequential_at, periods, True)
        else:
            lock_s = next(r["seconds"] for r in rows if r["sessions"] == sequential_at)
        seq_s, _, seq_prices = study_run(backend, sequential_at, periods, False)
        out["sequential"] = {"sessions": sequential_at, "lockstep_s": round(lock_s, 3),
                             "sequential_s": round(seq_s, 3), "ratio": round(seq_s / lock_s, 2),
                             "identical_prices": bool(lock_prices.equals(seq_prices))}
    return out


def save_model(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def train_main_adapters(base: Path, placement, work: Path, tiny: bool) -> dict:
    """The main job's two adapters (finetune.recipes' recipes, data seed 0, both phases) trained
    on `base`; tiny: 2 steps of each on a few examples."""
    from agents.preferences import preference
    from finetune.pipeline import train_adapter
    from finetune.recipes import has_second_phase, recipe
    from finetune.registry import read_adapter_manifest

    found = {}
    for name, kappa in (("economicus", None), ("moralis", 0.5)):
        pref, parts = preference(name, kappa), recipe(name)
        counts = {k: 4 for k in parts.counts} if tiny else parts.counts
        options = {**parts.options, "device": placement.device, "dtype": placement.dtype,
                   **({"max_steps": 2, "top_layers": 1} if tiny else {})}
        probe = parts.probe if not tiny else 0
        started = time.perf_counter()
        train_adapter(pref, counts, probe, options, work / "adapters" / pref.name, work / "data", base,
                      "random", 0, "answer", log=lambda *_: None)
        m = read_adapter_manifest(work / "adapters" / pref.name)
        found[pref.name] = {"seconds": round(time.perf_counter() - started, 1), "train_seconds": m["train_seconds"],
                            "samples_per_second": m["samples_per_second"], "phases": 1 + has_second_phase(
                                pref, counts, probe), "device": m["device"], "dtype": m["dtype"]}
    found["both_seconds"] = round(sum(v["seconds"] for v in found.values()), 1)
    return found


def train_steps(base: Path, placement, work: Path, steps: int) -> dict:
    """`steps` steps of the economicus first phase (the recipe's options and data) on `base`."""
    from agents.preferences import preference
    from finetune.pipeline import make_data
    from finetune.recipes import recipe
    from finetune.registry import read_adapter_manifest
    from finetune.train import TrainOptions, train

    parts = recipe("economicus")
    data = make_data(preference("economicus"), parts.counts, 0, work / "data")
    out = work / "steps"
    started = time.perf_counter()
    train(TrainOptions(str(data), str(out), str(base), max_steps=steps, device=placement.device,
                       dtype=placement.dtype, **parts.options), show_progress=False)
    m = read_adapter_manifest(out)
    return {"steps": steps, "seconds": round(time.perf_counter() - started, 1), "train_seconds": m["train_seconds"],
            "samples_per_second": m["samples_per_second"]}


def peak_memory_gib(placement) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if placement.on_gpu else None


def machine(placement) -> dict:
    import torch
    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip() or None
    return {"date": date.today().isoformat(), "commit": commit, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(placement.device) if placement.on_gpu else platform.processor() or
            platform.machine(), "cpu_threads": torch.get_num_threads(), **placement.as_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["135m", "1.7b", "8b"])
    parser.add_argument("--sessions", nargs="+", type=int, default=[1, 4, 16, 64, 256],
                        help="numbers of lock-step sessions (the 135m shape; larger shapes run those <= --big-max)")
    parser.add_argument("--big-max", type=int, default=256, help="most sessions for the 1.7b and 8b shapes")
    parser.add_argument("--periods", type=int, default=10)
    parser.add_argument("--sequential-at", type=int, default=16, help="sessions of the sequential comparison (0: none)")
    parser.add_argument("--train-steps", type=int, default=20, help="1.7b training steps (0: no training check)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on a GPU, float32 on the CPU), float32, ...")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the prepared embedded model's)")
    parser.add_argument("--tiny", action="store_true", help="the CPU check: the tiny shape, 1/4/16 sessions, "
                                                            "2 periods, 2 training steps")
    parser.add_argument("--no-train", action="store_true", help="leave training out")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if any(n < 1 for n in args.sessions) or args.periods < 1 or args.sequential_at < 0 or args.train_steps < 0:
        fail("--sessions and --periods must be >= 1, --sequential-at and --train-steps >= 0")
    if args.tiny:
        args.shapes, args.sessions, args.periods, args.sequential_at = ["tiny"], [1, 4, 16], 2, 4

    from transformers import AutoTokenizer

    from agents.errors import InputError
    from agents.llm.devices import resolve_placement
    from agents.llm.models import resolve
    from agents.llm.transformers_backend import TransformersBackend

    try:
        placement = resolve_placement(args.device, args.dtype)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or resolve(None))
    except (InputError, OSError) as err:
        fail(str(err))
    report = {"machine": machine(placement), "periods": args.periods, "shapes": {}}
    where = report["machine"]
    print(f"{where['device']} ({placement.device}, {placement.dtype}), commit {where['commit']}, {where['date']}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as scratch:
        work = Path(scratch)
        for shape in args.shapes:
            import torch

            if placement.on_gpu:
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            model = build(shape, tokenizer, placement)
            backend = TransformersBackend.from_model(model, tokenizer)
            sessions = [n for n in args.sessions if shape in ("tiny", "135m") or n <= args.big_max]
            found = {"parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                     "build_s": round(time.perf_counter() - started, 1)}
            found.update(lockstep_curve(backend, sessions, args.periods,
                                        args.sequential_at if shape in ("tiny", "135m") else None))
            found["peak_gib_inference"] = peak_memory_gib(placement)
            train_here = not args.no_train and (shape in ("tiny", "135m") or (shape == "1.7b" and args.train_steps))
            if train_here:
                base = save_model(model, tokenizer, work / f"base-{shape}")
                del backend, model
                if placement.on_gpu:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                found["training"] = (train_steps(base, placement, work / shape, args.train_steps)
                                     if shape == "1.7b" else train_main_adapters(base, placement, work / shape,
                                                                                 args.tiny))
                found["peak_gib_training"] = peak_memory_gib(placement)
            else:
                del backend, model
            if placement.on_gpu:
                torch.cuda.empty_cache()
            report["shapes"][shape] = found
            show(shape, found, args.periods)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures: {args.out}")


def show(shape: str, found: dict, periods: int) -> None:
    """One shape's table."""
    print(f"\n{shape}: {found['parameters_m']}M parameters (built in {found['build_s']} s); "
          f"{periods} periods of llm_base, lock-step")
    print(f"{'sessions':>8s} {'seconds':>8s} {'calls':>6s} {'sess-periods/s':>15s} {'forward share':>14s} "
          f"{'host ms/request':>16s}")
    for r in found["curve"]:
        print(f"{r['sessions']:8d} {r['seconds']:8.2f} {r['calls']:6d} {r['session_periods_per_s']:15.1f} "
              f"{r['forward_share']:14.0%} {r['host_ms_per_request']:16.2f}")
    target = TARGETS.get(shape)
    at64 = next((r for r in found["curve"] if r["sessions"] == 64), None)
    if target and at64:
        print(f"at 64 sessions: {at64['session_periods_per_s']:.1f} session-periods/s (target >= {target}), "
              f"forward share {at64['forward_share']:.0%} (target >= 60%)")
    seq = found.get("sequential")
    if seq:
        print(f"{seq['sessions']} sessions: lock-step {seq['lockstep_s']:.2f} s vs one at a time "
              f"{seq['sequential_s']:.2f} s: {seq['ratio']:.2f}x; identical prices: {seq['identical_prices']}")
    if "training" in found:
        print(f"training: {json.dumps(found['training'])}")
    peaks = [f"{k.removeprefix('peak_gib_')} {found[k]} GiB" for k in ("peak_gib_inference", "peak_gib_training")
             if found.get(k) is not None]
    if peaks:
        print("peak GPU memory: " + ", ".join(peaks))


if __name__ == "__main__":
    main()
