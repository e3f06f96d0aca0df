"""The `econalign` command line. Each subcommand lives in its own scenarios module."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scenarios.theory import GAME_NAMES, PARAMETERS, InputError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit code 2)."""

    def error(self, message):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message}\n")


def _theory(args) -> int:
    from scenarios.theory import format_result, make_preference, parse_value, solve

    if args.game not in GAME_NAMES:
        raise InputError(f"unknown game {args.game!r} (expected one of: {', '.join(GAME_NAMES)})")
    params = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set takes NAME=VALUE, got {item!r}")
        params[name.strip()] = parse_value(args.game, name.strip(), value.strip())
    pref = make_preference(args.preference, args.kappa, args.utility)
    result = solve(args.game, pref, params)
    print(json.dumps(result.as_dict()) if args.json else format_result(result))
    return 0


def _models_prepare(args) -> int:
    from agents.llm.models import prepare

    print(prepare(args.source, force=args.force))
    return 0


def _serve(args) -> int:
    import time

    from agents.llm.models import resolve
    from agents.llm.server import VLLMServer

    server = VLLMServer(resolve(args.model), args.adapters, host=args.host, port=args.port,
                        python=args.vllm_python, log=args.log, max_lora_rank=args.max_lora_rank)
    names = ", ".join(a.name for a in server.adapters) or "none"
    print(f"starting vLLM for {server.model.name} (adapters: {names}) at {server.url} ...", flush=True)
    try:
        server.start()
        server.wait_ready()
        print(f"ready: {server.url}/v1  model 'base', adapters: {names}  (Ctrl-C stops it)", flush=True)
        while server.process.poll() is None:
            time.sleep(1.0)
        print(f"econalign: error: vLLM exited with code {server.process.returncode}", file=sys.stderr)
        return 1
    finally:
        server.stop()


def _games_eval(args) -> int:
    from agents.llm.decision_log import DecisionLog
    from scenarios.evaluation import build_policies, evaluate_games

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with DecisionLog(out / "decisions.jsonl") as log:
        policies = build_policies(args.backend, args.model, args.url, args.adapter, args.theory,
                                  log=log, include_base=not args.no_base, utility=args.utility,
                                  replay=args.log)
        summary, totals = evaluate_games(policies, out, small=args.small, split=args.split,
                                         utility=args.utility, batch_size=args.batch_size)
    print(totals.to_string(index=False))
    print(f"report: {out}/summary.md")
    return 0


def _situations(text: str) -> dict:
    from finetune.dataset import parse_situations

    try:
        return parse_situations(text)
    except ValueError as err:
        raise InputError(str(err)) from None


def _finetune_data(args) -> int:
    from finetune.dataset import MAX_EXAMPLES, make_mixed_examples, write_jsonl
    from scenarios.theory import make_preference

    if not 1 <= args.n <= MAX_EXAMPLES:
        raise InputError(f"--n must be 1 to {MAX_EXAMPLES:,}, got {args.n}")
    pref = make_preference(args.preference, args.kappa, args.utility)
    counts = {name: n or args.n for name, n in _situations(args.situations).items()}
    try:
        examples = make_mixed_examples(pref, counts, args.seed, args.style)
    except ValueError as err:
        raise InputError(str(err)) from None
    digest = write_jsonl(examples, args.out)
    openai = args.openai or str(Path(args.out).with_suffix(".openai.jsonl"))
    write_jsonl(examples, openai, openai=True)
    mix = ", ".join(f"{name} {n}" for name, n in counts.items())
    print(f"{len(examples)} examples ({mix}) for {pref.name} -> {args.out} (sha256 {digest[:12]}); "
          f"OpenAI format -> {openai}")
    return 0


TRAIN_FLAGS = {"base": "base model (default: the embedded model)", "rank": "LoRA rank",
               "epochs": "epochs", "batch_size": "batch size", "learning_rate": "peak learning rate",
               "max_steps": "stop after this many steps (-1: the epochs decide)", "seed": "seed",
               "top_layers": "adapt only the top N layers (0: all)",
               "bf16": "bf16 autocast (default float32, the same on every CPU)"}


def options_flags(parser, cls, helps: dict, names: dict | None = None) -> None:
    """One --flag per field of the dataclass `cls` named in `helps`, with the field's default and
    type (a bool default: a switch); `names` renames flags (learning_rate -> lr)."""
    from dataclasses import MISSING, fields

    for f in fields(cls):
        if f.name not in helps:
            continue
        default = None if f.default is MISSING else f.default
        flag = "--" + (names or {}).get(f.name, f.name).replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action="store_true", help=helps[f.name])
        else:
            parser.add_argument(flag, dest=f.name, type=str if default is None else type(default), default=default,
                                help=f"{helps[f.name]} (default {default})" if default is not None else helps[f.name])


def _finetune_train(args) -> int:
    from finetune.train import TrainOptions, train

    options = TrainOptions(args.data, args.out, **{name: getattr(args, name) for name in TRAIN_FLAGS})
    try:
        options.check()
        folder = train(options)
    except ValueError as err:
        raise InputError(str(err)) from None
    from finetune.train import read_manifest
    m = read_manifest(folder)
    print(f"adapter -> {folder} ({m['train_seconds']} s, {m['samples_per_second']} samples/s, "
          f"loss {m['loss_curve'][0][1]:.3f} -> {m['loss_curve'][-1][1]:.3f})")
    return 0


def _finetune_evaluate(args) -> int:
    from agents.preferences import from_name
    from finetune.pipeline import evaluate_adapters
    from finetune.registry import adapter_path, list_adapters
    from finetune.train import read_manifest

    names = args.adapter or list(list_adapters(args.adapters))
    if not names:
        raise InputError(f"no adapters in {args.adapters}")
    adapters = {}
    for name in names:
        try:
            manifest = read_manifest(adapter_path(name, args.adapters))
        except ValueError as err:
            raise InputError(str(err)) from None
        if "preference" not in manifest:
            raise InputError(f"adapter {name} has no manifest.json naming its preference")
        from agents.llm.models import model_hash, resolve
        from agents.llm.server import inspect_adapter
        base = resolve(args.base)         # refuse a corrupt or foreign adapter before loading any model
        inspect_adapter(adapter_path(name, args.adapters), base, name=name, base_sha256=model_hash(base))
        try:
            adapters[name] = from_name(manifest["preference"])
        except ValueError as err:
            raise InputError(f"adapter {name}: {err}") from None
    evaluate_adapters(Path(args.adapters), adapters, Path(args.out), base=args.base, small=args.small)
    print(f"report: {args.out}/scores.md")
    return 0


def _finetune_pipeline(args) -> int:
    from finetune.pipeline import PipelineOptions, run_pipeline

    if args.examples is not None and args.examples < 1:
        raise InputError(f"--examples must be at least 1, got {args.examples}")
    if args.epochs is not None and not args.epochs > 0:
        raise InputError(f"--epochs must be positive, got {args.epochs}")
    train = {"epochs": args.epochs} if args.epochs else {}
    if args.bf16:
        train["bf16"] = True
    run_pipeline(PipelineOptions(adapters=args.adapters, out=args.out, base=args.base,
                                 situations=_situations(args.situations), examples=args.examples,
                                 small=args.small, style=args.style, train=train))
    return 0


def _transfer(args) -> int:
    from scenarios.transfer import run_transfer

    adapters, markets = run_transfer(args.out, args.adapters)
    print("\nHeld-out share equal to the adapter's theory, and P(swerve) for 1 passenger vs N pedestrians:")
    print(adapters.drop(columns=["situations"]).to_string(index=False, float_format="%.3f"))
    print("\nLLM duopolies (Delta over the final window, mean and spread over sessions):")
    print(markets.to_string(index=False, float_format="%.3f"))
    print(f"tables: {args.out}/transfer_adapters.md, {args.out}/transfer_markets.md")
    return 0


def _market_run(args) -> int:
    from scenarios.market import run_scenario

    try:
        summary = run_scenario(args.config, args.out)
    except ValueError as err:       # e.g. a checkpoint of another study in --out
        raise InputError(str(err)) from None
    shown = {k: v for k, v in summary.items() if k in ("scenario", "engine", "mean_delta", "sd_delta",
                                                       "mean_price_index", "mean_price", "converged_share",
                                                       "backend_calls_per_step", "invalid_decisions")}
    print(json.dumps(shown, indent=2, default=float))
    print(f"results: {args.out}/ (summary.json, manifest.json, plots)")
    return 0


def _av_run(args) -> int:
    from scenarios.av import run_av_scenario

    summary = run_av_scenario(args.config, args.out)
    shown = {k: summary[k] for k in ("scenario", "dilemmas", "backend_calls_per_step", "invalid_decisions", "by_type")}
    print(json.dumps(shown, indent=2, default=float))
    print(f"results: {args.out}/ (summary.json, manifest.json, plots)")
    return 0


def _study_run(args) -> int:
    from scenarios.study import run_study

    table = run_study(args.study, args.out)
    print(table.drop(columns=["folder"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"results: {args.out}/ (study.csv, study.md, study.png, cells/)")
    return 0


def _viz(args) -> int:
    """Start Mesa's SolaraViz server for one model (simulation/<model>_app.py) until Ctrl-C or
    SIGTERM; either stops the server too."""
    import os
    import shutil
    import signal
    import subprocess

    import simulation

    solara = shutil.which("solara", path=str(Path(sys.executable).parent)) or shutil.which("solara")
    if solara is None:
        raise InputError("the visual server needs the viz extra: pip install -e '.[viz]'")
    if not Path(args.adapters).is_dir() and args.adapters != "adapters":
        raise InputError(f"--adapters {args.adapters} is not a folder")
    from simulation.viz_assets import cache_folder, missing_assets
    missing = missing_assets()
    if missing:
        raise InputError(f"the page would stay blank offline: {len(missing)} of its files are not in "
                         f"{cache_folder()} (first: {missing[0]}); install them with pip install -e '.[viz]' "
                         "(the solara-assets package)")
    app = Path(simulation.__file__).parent / f"{args.model}_app.py"
    env = {**os.environ, "ECONALIGN_ADAPTERS": str(Path(args.adapters).resolve())}
    print(f"visual server for the {args.model} model at http://{args.host}:{args.port} (Ctrl-C stops it)",
          flush=True)
    command = [solara, "run", str(app), "--host", args.host, "--port", str(args.port), "--production",
               "--no-open", "--no-check-version"]
    server = subprocess.Popen(command, env=env)
    # SIGTERM would end this process at once and leave the server running: unwind instead
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return server.wait()
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=10)
        signal.signal(signal.SIGTERM, previous)


def _demo(args) -> int:
    from scenarios.demo import run_demo

    run_demo(args.out, finetune=not args.no_finetune)
    return 0


def _scenario_command(sub, name: str, help: str, folder: str, examples: str, run) -> None:
    """`econalign NAME run CONFIG --out DIR` for the scenario files in scenarios/FOLDER/."""
    command = sub.add_parser(name, help=help)
    commands = command.add_subparsers(dest=f"{name}_command", required=True, parser_class=_Parser)
    runner = commands.add_parser("run", help=f"run a scenario file (scenarios/{folder}/*.toml)")
    runner.add_argument("config", help=f"scenario TOML file, or a bundled scenario name ({examples})")
    runner.add_argument("--out", required=True, help="folder for step data, manifest, decision log, plots")
    runner.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    from finetune.dataset import STYLES
    from finetune.train import TrainOptions

    parser = _Parser(prog="econalign", description="LLM agents with economic preferences in markets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    theory = sub.add_parser("theory", help="homo economicus / homo moralis prediction for a game",
                            description="Symmetric equilibrium of a population of one preference "
                                        "type. Parameters: " + "; ".join(
                                            f"{g}: {' '.join(p)}" for g, p in PARAMETERS.items()))
    theory.add_argument("game", help="one of: " + ", ".join(GAME_NAMES))
    theory.add_argument("--preference", choices=("economicus", "moralis"))
    theory.add_argument("--kappa", type=float, help="degree of morality in [0, 1] (implies moralis)")
    theory.add_argument("--utility", choices=("linear", "log"), default="linear",
                        help="material utility v(m): m or ln(1 + m)")
    theory.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="game parameter (repeatable); a and cost take comma lists per firm")
    theory.add_argument("--json", action="store_true", help="print one JSON object")
    theory.set_defaults(run=_theory)

    models = sub.add_parser("models", help="prepare the embedded model (or a GGUF file) once")
    models_sub = models.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    prep = models_sub.add_parser("prepare", help="turn a GGUF file into a cached safetensors folder")
    prep.add_argument("--source", help="a .gguf file or model folder (default: embedded SmolLM2-135M)")
    prep.add_argument("--force", action="store_true", help="prepare again even if cached")
    prep.set_defaults(run=_models_prepare)

    serve = sub.add_parser("serve", help="start a vLLM server for a base model and its adapters")
    serve.add_argument("--model", help="model folder, prepared .gguf, or the default")
    serve.add_argument("--adapters", help="a folder of LoRA adapters (one sub-folder each)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-lora-rank", type=int, help="vLLM's limit (default: the adapters' rank)")
    serve.add_argument("--vllm-python", help="the Python that has vLLM (default: .venv-vllm)")
    serve.add_argument("--log", help="write the server's output to this file")
    serve.set_defaults(run=_serve)

    games = sub.add_parser("games", help="the canonical-games evaluation battery")
    games_sub = games.add_subparsers(dest="games_command", required=True, parser_class=_Parser)
    ev = games_sub.add_parser("eval", help="measure a model, its adapters and theory baselines")
    ev.add_argument("--backend", choices=("transformers", "openai", "replay"), default="transformers")
    ev.add_argument("--model", help="model folder or prepared .gguf (openai: the served base name)")
    ev.add_argument("--url", help="OpenAI-compatible server (openai backend)")
    ev.add_argument("--adapter", action="append", default=[], metavar="NAME[=PATH]",
                    help="an adapter to evaluate beside the base model (repeatable)")
    ev.add_argument("--theory", action="append", default=[], metavar="economicus|moralis:K",
                    help="a theory policy to include (repeatable)")
    ev.add_argument("--no-base", action="store_true", help="leave the base model out")
    ev.add_argument("--log", help="decision log to replay (replay backend)")
    ev.add_argument("--small", action="store_true", help="a subset of the incentives")
    ev.add_argument("--split", choices=("all", "train", "heldout"), default="all")
    ev.add_argument("--utility", choices=("linear", "log"), default="linear",
                    help="material utility of the theory tags")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--out", default="outputs/games", help="report folder (rerun resumes)")
    ev.set_defaults(run=_games_eval)

    ft = sub.add_parser("finetune", help="synthetic data, LoRA training, before/after evaluation")
    ft_sub = ft.add_subparsers(dest="finetune_command", required=True, parser_class=_Parser)
    data = ft_sub.add_parser("data", help="chat examples with worked reasoning from the theory")
    data.add_argument("--preference", choices=("economicus", "moralis"), required=True)
    data.add_argument("--kappa", type=float)
    data.add_argument("--utility", choices=("linear", "log"), default="linear")
    data.add_argument("--n", type=int, required=True,
                      help="examples of each situation named without a count in --situations")
    data.add_argument("--situations", default="games,pricing,av", metavar="games,pricing,av",
                      help="situations to draw from, each optionally with its count (games=160,pricing=64)")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--style", choices=STYLES, default="reasoning",
                      help="games' assistant turn: worked reasoning ending in the answer, the game and "
                           "role then the answer, or the answer alone (applications: the answer alone)")
    data.add_argument("--out", required=True, help="JSONL file")
    data.add_argument("--openai", help="also write the OpenAI fine-tuning format here "
                                       "(default: OUT with .openai.jsonl)")
    data.set_defaults(run=_finetune_data)
    tr = ft_sub.add_parser("train", help="LoRA SFT of the base model on a data file")
    tr.add_argument("--data", required=True)
    tr.add_argument("--out", required=True, help="adapter folder, e.g. adapters/economicus")
    options_flags(tr, TrainOptions, TRAIN_FLAGS, {"learning_rate": "lr"})
    tr.set_defaults(run=_finetune_train)
    fe = ft_sub.add_parser("evaluate", help="base model vs adapters on the held-out battery")
    fe.add_argument("--adapters", default="adapters", help="the adapter registry folder")
    fe.add_argument("--adapter", action="append", default=[], help="only these adapters")
    fe.add_argument("--base", help="base model (default: the embedded model)")
    fe.add_argument("--small", action="store_true")
    fe.add_argument("--out", default="outputs/finetune/eval")
    fe.set_defaults(run=_finetune_evaluate)
    fp = ft_sub.add_parser("pipeline", help="data -> train -> evaluate for economicus and moralis-0.5")
    fp.add_argument("--adapters", default="adapters")
    fp.add_argument("--out", default="outputs/finetune")
    fp.add_argument("--base")
    fp.add_argument("--situations", default="games,pricing,av", metavar="games,pricing,av",
                    help="situations in the training data, each optionally with its count "
                         "(default: all three, counts from the recipe); `games` alone is the paper's set-up")
    fp.add_argument("--examples", type=int, help="games examples per adapter (default: economicus 128, moralis 160)")
    fp.add_argument("--bf16", action="store_true", help="train with bf16 autocast (default float32)")
    fp.add_argument("--epochs", type=float, help="epochs per adapter (default 2)")
    fp.add_argument("--small", action="store_true", help="evaluate on the small held-out battery")
    fp.add_argument("--style", choices=STYLES, default="answer",
                    help="training answer style (answer: measured best on the embedded model)")
    fp.set_defaults(run=_finetune_pipeline)

    _scenario_command(sub, "market", "repeated Bertrand markets (LLM, theory, Q-learning firms)",
                      "markets", "calvano, llm_base, theory_moralis, ...", _market_run)
    _scenario_command(sub, "av", "autonomous-vehicle traffic with brake-failure dilemmas (LLM and theory AVs)",
                      "avs", "theory, llm_base, llm_mixed, ...", _av_run)

    study = sub.add_parser("study", help="batch parameter studies: a market scenario over a grid and seeds")
    study_sub = study.add_subparsers(dest="study_command", required=True, parser_class=_Parser)
    study_run = study_sub.add_parser("run", help="run a study file (scenarios/studies/*.toml), resumable")
    study_run.add_argument("study", help="study TOML file, or a bundled study name "
                                         "(kappa, calvano_alpha_beta, llm_kappa, llm_pairs)")
    study_run.add_argument("--out", required=True, help="folder for study.csv/md/png and one folder per cell")
    study_run.set_defaults(run=_study_run)

    viz = sub.add_parser("viz", help="the interactive visual server (Mesa SolaraViz) for a model")
    viz.add_argument("model", choices=("market", "av"), help="market: Bertrand pricing; av: AV traffic")
    viz.add_argument("--host", default="127.0.0.1")
    viz.add_argument("--port", type=int, default=8765)
    viz.add_argument("--adapters", default="adapters", help="adapter folder for LLM decision makers")
    viz.set_defaults(run=_viz)

    transfer = sub.add_parser("transfer", help="games-only vs games + applications adapters, side by side")
    transfer.add_argument("--adapters", default="adapters",
                          help="the in-domain adapters (the main job's); the games-only ones go to ADAPTERS/games-only")
    transfer.add_argument("--out", default="outputs/transfer")
    transfer.set_defaults(run=_transfer)

    demo = sub.add_parser("demo", help="the main job: theory table and Bertrand-by-kappa plot")
    demo.add_argument("--out", default="outputs/demo", help="folder for the report")
    demo.add_argument("--no-finetune", action="store_true",
                      help="skip training/evaluating the adapters (about 12 minutes the first time)")
    demo.set_defaults(run=_demo)
    return parser


def exit_code(err: BaseException) -> int | None:
    """The one mapping of errors to exit codes: the user's input (a file, value, model or adapter
    that is wrong) 2; a backend, server or solver that failed 1; anything else is a bug (None:
    its traceback is shown)."""
    from agents.llm.models import ModelError
    from agents.llm.server import AdapterError

    if isinstance(err, (InputError, ModelError, AdapterError)):
        return 2
    if isinstance(err, RuntimeError):       # BackendError, ServerError, a solver that did not converge
        return 1
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("econalign: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        code = exit_code(err)
        if code is None:
            raise
        print(f"econalign: error: {err}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
