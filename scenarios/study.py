"""Batch parameter studies: one market scenario run over a grid of settings and seeds, each cell
a full `market run`, collected into one table and plot (collusion, Delta, by setting).

A study file (TOML):

    name = "calvano-alpha-beta"
    scenario = "calvano"              # a bundled market scenario, or a file beside the study
    seeds = [0, 1]                    # every cell once per seed (default [the scenario's seed])
    [set]                             # overrides for every cell
    "run.sessions" = 20
    [grid]                            # dotted keys into the scenario; every combination is a cell
    "qlearning.alpha" = [0.05, 0.15, 0.25]
    "qlearning.beta" = [2e-6, 8e-6]
    [study]
    executor = "local"                # or "ray": the cells shared among `workers` Ray actors
    workers = 2                       # 1 to 256; refused where the workers' own models outgrow free memory
    train_adapters = false            # true: fine-tune (cached) the adapters the LLM firms name
    theory_curve = false              # true: plot the homo moralis equilibrium Delta beside kappa

Keys are "section.key" ([market], [grid], [qlearning], [run], [llm]), "firm.key" (every [[firm]]),
or "market.firms" (the [[firm]] tables repeated to that many firms). A cell whose summary.json
exists is not run again (unless an adapter its LLM firms name has other weights since), so an
interrupted study resumes (an interrupted LLM cell at its last
logged period); a worker runs its Mesa cells in lock-step on one backend (`run_cells`); `study.csv`, `study.md` and
`study.png` in the output folder hold one row per cell. A study has at most 10,000 cells (grid
combinations x seeds, counted before any is made: scenarios.settings.MAX_CELLS); a worker's Mesa
cells step in lock-step in batches whose records fit (scenarios.market.lockstep_batches);
study.json counts the cells' LLM decisions and invalid ones, and the command exits 1 when every
one was invalid.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pandas as pd

from agents.llm.models import ModelError, resolve
from agents.records import folder_lock, markdown_table, write_json
from finetune.pipeline import PipelineOptions, run_pipeline
from finetune.recipes import follows_recipe
from finetune.registry import adapter_name, list_adapters, parse_adapter_name
from scenarios.invalid import add_invalid, report_invalid
from scenarios.market import llm_preferences, lockstep_batches, ran_with_current_adapters, run_scenario, run_scenarios
from scenarios.ray_local import run_confined
from scenarios.runs import build_backend
from scenarios.settings import Study
from scenarios.settings_errors import ConfigError
from scenarios.settings_files import STUDIES, cell_overrides, load_scenario, load_study
from scenarios.study_plots import plot_study

MEASURES = ("mean_delta", "sd_delta", "converged_share", "mean_price", "mean_price_index",
            "mean_periods", "invalid_decisions", "backend_calls_per_step", "seconds")


def setting_label(value) -> str | int | float | bool:
    """A grid value as the table shows it: a per-firm list as "first/second/..."."""
    return "/".join(map(str, value)) if isinstance(value, list) else value


def cell_folder(out: Path, index: int, cell: dict) -> Path:
    """out/cells/NNNN_<slug>: the slug names the cell's values in letters, digits and . + = -
    only (a value can never reach outside `out`), at most 100 characters."""
    slug = "_".join(k.rpartition(".")[2] + (f"{v:g}" if isinstance(v, (int, float)) else
                                            str(setting_label(v)).replace("/", "+"))
                    for k, v in cell.items())
    slug = re.sub(r"[^A-Za-z0-9.+=_-]", "-", slug).replace("..", "-")[:100]
    return out / "cells" / f"{index:04d}_{slug}"


def stale_cell(s: Study, folder: Path, cell: dict) -> str | None:
    """Why a finished cell must run again, or None: it ran with other settings than the study
    gives it now (the scenario file and [set] included; its manifest's config), or its LLM firms
    with other adapter weights than those now in their folder."""
    scenario = load_scenario(s.scenario_path, cell_overrides({**s.fixed, **cell}))
    manifest = folder / "manifest.json"
    ran = json.loads(manifest.read_text()).get("config") if manifest.exists() else None
    if ran != json.loads(json.dumps(scenario.raw, default=str)):
        return "other settings"
    if scenario.uses_llm and not ran_with_current_adapters(scenario, folder):
        return "other adapter weights"
    return None


def cell_job(s: Study, folder: Path, cell: dict) -> tuple[str, str, dict]:
    """What `run_cells` takes for one cell: (scenario, folder, its overrides)."""
    return str(s.scenario_path), str(folder), {**s.fixed, **cell}


def run_cells(jobs: list, backends: dict | None = None, done=lambda n: None, progress: bool = False) -> dict:
    """Cells (scenario, folder, settings) on one worker: vectorised ones one after another, Mesa
    ones together in lock-step (scenarios.market.run_scenarios: one backend call per period for
    every LLM firm of every cell and session), one backend per distinct [llm] section, loaded
    once and kept in `backends` for the worker's next cells. `done(n)` reports finished cells.
    Returns `backends`."""
    backends = {} if backends is None else backends
    groups: dict[str, list] = {}
    for scenario, folder, settings in jobs:
        s = load_scenario(scenario, cell_overrides(settings))
        if s.run.engine == "vectorised":
            run_scenario(scenario, folder, progress=False, overrides=cell_overrides(settings))
            done(1)
        else:
            key = s.llm.model_dump_json() if s.uses_llm else ""
            groups.setdefault(key, []).append((s, Path(folder)))
    for key, group in groups.items():
        backend = None
        if key:
            wanted = sorted({p for s, _ in group for p in llm_preferences(s)})
            cached = backends.get(key)
            if cached is None or not set(wanted) - {"base"} <= set(getattr(cached, "adapters", wanted)):
                first = group[0][0]
                backends[key] = build_backend(first.llm, wanted, first.seed, None)[0]
            backend = backends[key]
        for batch in lockstep_batches(group):      # as many cells in lock-step as their records allow
            run_scenarios(batch, backend, progress=progress)
            done(len(batch))
    return backends


class CellWorker:
    """A Ray actor running cells with its own backends (the model loaded once per worker)."""

    def __init__(self):
        self.backends: dict = {}
        self.loads = 0

    def run(self, jobs: list) -> int:
        before = set(map(id, self.backends.values()))
        run_cells(jobs, self.backends)
        self.loads += len(set(map(id, self.backends.values())) - before)
        return self.loads


def run_study(path: str | Path, out: str | Path, progress: bool = True, log=print) -> pd.DataFrame:
    """Run every cell not yet done (locally or on Ray), then write the table and the plot."""
    from tqdm import tqdm

    s = load_study(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = s.cells()
    folders = [cell_folder(out, i, c) for i, c in enumerate(cells)]
    if s.study.train_adapters:
        train_named_adapters(s, cells, out, log)
    pending = [i for i, f in enumerate(folders) if not (f / "summary.json").exists()]
    for i in sorted(set(range(len(cells))) - set(pending)):
        reason = stale_cell(s, folders[i], cells[i])
        if reason:
            log(f"{s.name}: {folders[i].name} ran with {reason}; running it again")
            shutil.rmtree(folders[i])
            pending.append(i)
    pending.sort()
    log(f"{s.name}: {len(cells)} cells, {len(cells) - len(pending)} done, executor {s.study.executor}")
    started = time.time()
    with tqdm(total=len(cells), initial=len(cells) - len(pending), desc=f"{s.name}: cells",
              unit="cell", disable=not progress) as bar:
        jobs = [cell_job(s, folders[i], cells[i]) for i in pending]
        if s.study.executor == "ray":
            check_worker_memory(jobs, s.study.workers)
            _run_on_ray(jobs, s.study.workers, bar)
        else:
            run_cells(jobs, done=bar.update, progress=progress)
    table = collect(cells, folders)
    table.to_csv(out / "study.csv", index=False)
    (out / "study.md").write_text(markdown_table(table.drop(columns=["folder"]), digits=4))
    plot_study(table, list(s.grid), out / "study.png", title=s.name, theory=s.study.theory_curve)
    write_json(out / "study.json",
               {"name": s.name, "scenario": str(s.scenario_path), "grid": s.grid, "set": s.fixed, "seeds": s.seeds,
                "executor": s.study.executor, "workers": s.study.workers, "cells": len(cells), "ran": len(pending),
                "seconds": round(time.time() - started, 1), **invalid_totals(folders)})
    return table


def invalid_totals(folders: list[Path]) -> dict:
    """The cells' LLM decisions and invalid ones, in all and by LLM firm type (their summaries)."""
    by_type: dict[str, dict] = {}
    for folder in folders:
        add_invalid(by_type, json.loads((folder / "summary.json").read_text()).get("invalid_by_type", {}))
    return {"decisions": sum(v["decisions"] for v in by_type.values()),
            "invalid_decisions": sum(v["invalid"] for v in by_type.values()), "invalid_by_type": by_type}


def check_worker_memory(jobs: list, workers: int) -> None:
    """Each Ray worker (CellWorker) loads its own in-process model for every [llm] section its
    cells name: refuse the study when those weights (their safetensors files' size) exceed the
    memory available now. Servers (backend = "openai") and a model not found are not counted."""
    import psutil

    sections: dict[str, tuple] = {}
    weights: dict = {}
    need, loading = 0, 0
    for share in (jobs[i::workers] for i in range(workers)):
        loads = set()
        for scenario, _, settings in share:
            deciding = json.dumps({k: v for k, v in settings.items() if k.split(".")[0] in ("llm", "firm", "market")},
                                  sort_keys=True, default=str)
            if deciding not in sections:        # the [llm] section and firms depend on these keys only
                s = load_scenario(scenario, cell_overrides(settings))
                sections[deciding] = (s.llm.model_dump_json(), s.llm.model) \
                    if s.uses_llm and s.llm.backend == "transformers" else None
            if sections[deciding]:
                loads.add(sections[deciding])
        for _, model in loads:
            if model not in weights:
                try:
                    weights[model] = sum(p.stat().st_size for p in resolve(model).glob("*.safetensors"))
                except ModelError:
                    weights[model] = 0       # the worker reports it
            need += weights[model]
        loading += bool(loads)
    free = psutil.virtual_memory().available
    if need > free:
        raise ConfigError(f"[study] workers = {workers}: {loading} Ray workers each load their own model, "
                          f"{need / 2**30:,.1f} GiB of weights in all, but {free / 2**30:,.1f} GiB of memory are "
                          "free: use fewer workers (or an [llm] server, backend = \"openai\")")


def train_named_adapters(s: Study, cells: list[dict], out: Path, log=print) -> None:
    """Fine-tune (finetune pipeline, cached in the scenario's adapter folder) every adapter an
    LLM firm of the cells names that the folder does not hold yet, or holds from an older recipe;
    each registry is locked while it is looked at and trained."""
    wanted: dict[str, tuple] = {}
    for cell in cells:
        scenario = load_scenario(s.scenario_path, cell_overrides({**s.fixed, **cell}))
        for firm in scenario.firms:
            if firm.type == "llm" and firm.preference != "base":
                wanted.setdefault(scenario.llm.adapters, set()).add(parse_adapter_name(firm.preference))
    for folder, preferences in wanted.items():
        with folder_lock(folder, other="adapter folder ([llm] adapters)"):   # looked at and trained as one
            found = list_adapters(folder)
            missing = sorted(p for p in preferences if adapter_name(*p) not in found
                             or not follows_recipe(found[adapter_name(*p)], adapter_name(*p)))
            if missing:
                log(f"{s.name}: training {len(missing)} adapter(s) into {folder}")
                run_pipeline(PipelineOptions(adapters=str(folder), out=str(out / "finetune"),
                                             preferences=tuple(missing)), log=log)


def _run_on_ray(jobs: list, workers: int, bar) -> list[int]:
    """The cells on `workers` Ray actors: on a local Ray session kept on the loopback
    (scenarios.ray_local), or on the cluster RAY_ADDRESS names (or one already joined).
    Returns the backends each worker loaded."""
    try:
        import ray
    except ImportError:
        raise ConfigError("executor = \"ray\" needs Ray: pip install -e '.[batch]'") from None
    if os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return _ray_session(jobs, workers, bar.update)
    return run_confined(_ray_session, (jobs, workers), bar.update)


def _ray_session(jobs: list, workers: int, done) -> list[int]:
    """The cells shared among `workers` Ray actors, each with its own backend (CellWorker: the
    model, or a client of the vLLM server the cells name, set up once per worker); one numba
    thread each so that workers do not oversubscribe the cores. done(n) reports finished cells."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=None if os.environ.get("RAY_ADDRESS") else workers, include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": {"NUMBA_NUM_THREADS": "1"}})
    try:
        shares = [jobs[i::workers] for i in range(workers) if jobs[i::workers]]
        actor = ray.remote(num_cpus=1)(CellWorker)
        actors = [actor.remote() for _ in shares]
        waiting = {a.run.remote(share): len(share) for a, share in zip(actors, shares)}
        loads = []
        while waiting:
            finished, _ = ray.wait(list(waiting), num_returns=1)
            loads.append(ray.get(finished[0]))  # a failed cell raises here, after the finished ones are saved
            done(waiting.pop(finished[0]))
        return loads
    finally:
        if started_here:
            ray.shutdown()


def collect(cells: list[dict], folders: list[Path]) -> pd.DataFrame:
    """One row per cell: its settings and the scalar measures of its summary."""
    rows = []
    for cell, folder in zip(cells, folders):
        summary = json.loads((folder / "summary.json").read_text())
        rows.append({**{k: setting_label(v) for k, v in cell.items()},
                     **{m: summary[m] for m in MEASURES if m in summary}, "folder": folder.name})
    return pd.DataFrame(rows)


def run_study_command(args) -> int:
    """`econalign study run`: every cell of a study (resumable), then its table."""
    table = run_study(args.study, args.out)
    print(table.drop(columns=["folder"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"results: {args.out}/ (study.csv, study.md, study.png, cells/)")
    totals = json.loads((Path(args.out) / "study.json").read_text())
    return report_invalid(totals, f"{args.out}/cells/*/decisions.jsonl")      # 1 when every LLM decision was invalid


def add_commands(commands) -> None:
    names = ", ".join(sorted(p.stem for p in STUDIES.glob("*.toml")))
    study = commands.add("run", run_study_command, "run a study file (scenarios/studies/*.toml), resumable",
                         group="study", out="out", report=True)
    study.add_argument("study", help=f"study TOML file, or a bundled study name ({names})")
    study.add_argument("--out", required=True, help="folder for study.csv/md/png and one folder per cell")
