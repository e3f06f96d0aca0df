"""Batch parameter studies: every cell of the grid runs once (resumable), the table holds the
equilibrium Delta of homo moralis firms for each kappa and n, Ray cells equal local ones, and bad
study files fail in one line."""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agents.equilibria import symmetric_equilibrium
from agents.preferences import preference
from markets.bertrand import LogitBertrand
from scenarios.settings_files import load_study
from scenarios.study import run_study

STUDY = """
name = "t"
scenario = "theory_moralis"
[set]
"run.deviation" = false
"run.steps" = 25
[grid]
"firm.kappa" = [0.0, 0.5, 1.0]
[study]
executor = "{executor}"
workers = 2
"""


def _delta(kappa: float, n: int) -> float:
    """Calvano et al.'s Delta at the symmetric homo moralis equilibrium of the n-firm market."""
    market = LogitBertrand(firms=n)
    pref = preference("moralis", kappa) if kappa else preference("economicus")
    price = symmetric_equilibrium(pref, market.firm(0)).strategy
    profit = market.profits(np.full(n, price))[0]
    pi_n, pi_m = market.nash_profits()[0], market.monopoly_profits()[0]
    return float((profit - pi_n) / (pi_m - pi_n))


def test_kappa_study_gives_the_equilibrium_delta_and_resumes(tmp_path):
    table = run_study("kappa", tmp_path, progress=False, log=lambda _: None)
    assert len(table) == 10 and set(table["market.firms"]) == {2, 3}
    for row in table.itertuples():
        assert row.mean_delta == pytest.approx(_delta(row[1], row[2]), abs=1e-4)
    assert table.loc[table["firm.kappa"] == 0.0, "mean_delta"].abs().max() < 1e-6    # Bertrand-Nash
    assert table.loc[table["firm.kappa"] == 1.0, "mean_delta"].sub(1).abs().max() < 1e-6  # monopoly
    duopoly = table[table["market.firms"] == 2].set_index("firm.kappa").mean_delta
    assert duopoly[0.5] == pytest.approx(0.734, abs=1e-3)      # docs/theory.md
    assert (tmp_path / "study.png").exists() and (tmp_path / "study.md").read_text().count("\n") == 12
    stamps = {p: p.stat().st_mtime for p in tmp_path.glob("cells/*/summary.json")}
    messages = []
    again = run_study("kappa", tmp_path, progress=False, log=messages.append)
    assert "10 done" in messages[0]
    assert {p: p.stat().st_mtime for p in tmp_path.glob("cells/*/summary.json")} == stamps
    assert again.equals(table)


def test_finished_cells_run_again_when_the_studys_settings_change(tmp_path):
    """A changed [set] value (or scenario file) reruns the finished cells instead of reporting
    the old ones: homo moralis 0.5 duopolies at quality a = 2, then a = 3 into the same folder."""
    study = tmp_path / "quality.toml"
    text = ('name = "quality"\nscenario = "theory_moralis"\n[set]\n"run.deviation" = false\n"market.a" = {a}\n'
            '[grid]\n"firm.kappa" = [0.5]\n')
    study.write_text(text.format(a=2.0))
    first = run_study(study, tmp_path / "out", progress=False, log=lambda _: None)
    study.write_text(text.format(a=3.0))
    messages = []
    second = run_study(study, tmp_path / "out", progress=False, log=messages.append)
    assert any("ran with other settings; running it again" in m for m in messages) and "0 done" in messages[-1]
    fresh = run_study(study, tmp_path / "fresh", progress=False, log=lambda _: None)
    assert second.mean_delta.tolist() == fresh.mean_delta.tolist() != first.mean_delta.tolist()


def test_ray_cells_equal_local_cells(tmp_path):
    pytest.importorskip("ray", reason="the batch extra is installed by `make test`")
    tables = {}
    for executor in ("local", "ray"):
        path = tmp_path / f"{executor}.toml"
        path.write_text(STUDY.format(executor=executor))
        tables[executor] = run_study(path, tmp_path / executor, progress=False, log=lambda _: None)
    assert tables["ray"].mean_delta.tolist() == tables["local"].mean_delta.tolist()
    assert tables["ray"].mean_delta.tolist() == pytest.approx([_delta(k, 2) for k in (0.0, 0.5, 1.0)], abs=1e-4)


def _listening() -> set[str]:
    """Every address:port listening on this machine (TCP, IPv4 and IPv6)."""
    import psutil
    return {f"{c.laddr.ip} {c.laddr.port}" for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN"}


def test_a_local_ray_study_listens_on_the_loopback_only(tmp_path):
    """Ray's servers bind 0.0.0.0 / :: by themselves; scenarios.ray_local keeps them on 127.0.0.1
    (issue 19). Every socket opened while the study runs is watched."""
    pytest.importorskip("ray", reason="the batch extra is installed by `make test`")
    import threading

    from scenarios.ray_local import loopback_library
    if loopback_library() is None:
        pytest.skip("no C compiler to build the loopback library (`make test` installs gcc as root)")
    before, seen, running = _listening(), set(), True

    def watch():
        while running:
            seen.update(_listening() - before)
            time.sleep(0.1)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        path = tmp_path / "ray.toml"
        path.write_text(STUDY.format(executor="ray"))
        table = run_study(path, tmp_path / "ray", progress=False, log=lambda _: None)
    finally:
        running = False
        watcher.join()
    assert table.mean_delta.tolist() == pytest.approx([_delta(k, 2) for k in (0.0, 0.5, 1.0)], abs=1e-4)
    assert len(seen) >= 4                                          # GCS, raylet, driver, workers
    assert {s.split()[0] for s in seen} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, seen


def test_without_a_compiler_a_local_ray_session_warns_and_still_runs(monkeypatch):
    from scenarios.ray_local import loopback_library, run_confined
    monkeypatch.setenv("CC", "no-such-compiler")
    assert loopback_library() is None
    warnings, progress = [], []

    def session(n, report):
        report(n)
        return n * 2
    assert run_confined(session, (3,), progress.append, warn=warnings.append) == 6
    assert progress == [3] and "listens on every interface" in warnings[0]


LLM_STUDY = """
name = "llm"
scenario = "llm_base"
[set]
"run.deviation" = false
"run.steps" = 2
"run.sessions" = 2
"run.window" = 1
[grid]
"firm.memory" = [0, 1, 3]
[study]
executor = "{executor}"
workers = 2
"""


def test_a_workers_llm_cells_run_in_lock_step_on_one_backend(tmp_path):
    """Three LLM cells x 2 sessions x 2 firms: 12 requests in each of the 2 periods' one call."""
    import json

    from conftest import HashBackend
    from scenarios.settings_files import cell_overrides, load_scenario
    from scenarios.study import cell_folder, cell_job, run_cells

    path = tmp_path / "llm.toml"
    path.write_text(LLM_STUDY.format(executor="local"))
    s = load_study(path)
    jobs = [cell_job(s, cell_folder(tmp_path, i, c), c) for i, c in enumerate(s.cells())]
    key = load_scenario(s.scenario_path, cell_overrides(jobs[0][2])).llm.model_dump_json()
    backend = HashBackend()
    finished = []
    assert run_cells(jobs, {key: backend}, done=finished.append)[key] is backend   # not loaded again
    assert backend.counter.history == [("choose", 3 * 2 * 2)] * 2 and finished == [3]
    memories = [json.loads(Path(j[1], "summary.json").read_text())["sessions"] for j in jobs]
    assert len({json.dumps(m) for m in memories}) == 3                  # the cells differ


def test_adapter_pairs_study_gives_each_firm_its_preference(tmp_path):
    """The bundled llm_pairs study: a list value of a firm key is one value per firm; cells are
    labelled by pair, run in lock-step and plotted one position per pair."""
    import json

    from conftest import HashBackend
    from scenarios.settings_files import cell_overrides, load_scenario
    from scenarios.study import cell_folder, cell_job, collect, run_cells
    from scenarios.study_plots import plot_study

    study = load_study("llm_pairs")
    assert [c["firm.preference"] for c in study.cells()][2] == ["economicus", "moralis-0.5"]
    mixed = load_scenario(study.scenario_path, cell_overrides(cell_job(study, tmp_path, study.cells()[2])[2]))
    assert [f.preference for f in mixed.firms] == ["economicus", "moralis-0.5"]
    assert mixed.run.steps == 50 and mixed.run.sessions == 5
    short = study.model_copy(update={"fixed": {**study.fixed, "run.steps": 2, "run.sessions": 2}})
    cells = study.cells()
    folders = [cell_folder(tmp_path, i, c) for i, c in enumerate(cells)]
    assert all(f.parent == tmp_path / "cells" and "[" not in f.name and " " not in f.name for f in folders)
    jobs = [cell_job(short, f, c) for f, c in zip(folders, cells)]
    key = mixed.llm.model_dump_json()
    backend = HashBackend()
    run_cells(jobs, {key: backend})
    assert backend.counter.history == [("choose", 4 * 2 * 2)] * 2
    log = [json.loads(line) for line in (folders[2] / "decisions.jsonl").read_text().splitlines()]
    assert {(r["firm"], r["adapter"]) for r in log} == {(0, "economicus"), (1, "moralis-0.5")}
    table = collect(cells, folders)
    assert table["firm.preference"].tolist() == ["economicus/economicus", "moralis-0.5/moralis-0.5",
                                                 "economicus/moralis-0.5", "base/base"]
    plot_study(table, ["firm.preference"], tmp_path / "study.png", title="pairs")
    assert (tmp_path / "study.png").stat().st_size > 0


def test_a_finished_llm_cell_runs_again_when_its_adapter_was_retrained(tmp_path, fake_server):
    """A rerun of a study keeps its finished cells, unless an adapter their LLM firms name was
    retrained since (other weights under the same name): those cells run again."""
    adapter = tmp_path / "adapters" / "economicus"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"first training")
    path = tmp_path / "llm.toml"
    path.write_text(LLM_STUDY.format(executor="local").replace("[grid]", f"""
"llm.backend" = "openai"
"llm.url" = "{fake_server.url}"
"llm.adapters" = "{tmp_path / 'adapters'}"
"firm.preference" = "economicus"
[grid]"""))

    def run() -> tuple[list[str], int]:
        before, messages = fake_server.hits.get("/v1/completions", 0), []
        run_study(path, tmp_path / "out", progress=False, log=messages.append)
        return messages, fake_server.hits.get("/v1/completions", 0) - before

    messages, first = run()
    assert "0 done" in messages[-1] and first > 0
    messages, asked = run()
    assert "3 done" in messages[-1] and asked == 0
    (adapter / "adapter_model.safetensors").write_bytes(b"second training")
    messages, asked = run()
    assert sum("other adapter weights" in m for m in messages) == 3 and "0 done" in messages[-1]
    assert asked == first


def test_a_per_firm_value_needs_one_value_per_firm():
    from scenarios.settings_errors import ConfigError
    from scenarios.settings_files import load_scenario

    with pytest.raises(ConfigError, match="needs one value for each of the 2"):
        load_scenario("llm_economicus", {"firm": {"preference": ["economicus"] * 3}})
    # with market.firms = 3, three values (the tables are repeated to three first); two are refused
    s = load_scenario("theory_moralis", {"market": {"firms": 3}, "firm": {"kappa": [0.2, 0.4, 0.6]}})
    assert [f.kappa for f in s.firms] == [0.2, 0.4, 0.6] and s.bertrand().firms == 3
    with pytest.raises(ConfigError, match="needs one value for each of the 3"):
        load_scenario("theory_moralis", {"market": {"firms": 3}, "firm": {"kappa": [0.2, 0.4]}})


@pytest.mark.slow
def test_ray_study_with_llm_cells_loads_the_model_once_per_worker(tmp_path, tiny_model):
    """Ray workers load the model once each and run their LLM cells on it (the tiny random model,
    conftest.tiny_model: what is checked is where the model loads, not what it answers).
    Slow: a local Ray session of two workers (about 30 s on one core)."""
    pytest.importorskip("ray", reason="the batch extra is installed by `make test`")
    from scenarios.study import _run_on_ray, cell_folder, cell_job

    path = tmp_path / "llm.toml"
    path.write_text(LLM_STUDY.format(executor="ray").replace("[grid]", f'"llm.model" = "{tiny_model}"\n[grid]'))
    s = load_study(path)
    jobs = [cell_job(s, cell_folder(tmp_path, i, c), c) for i, c in enumerate(s.cells())]

    class Bar:
        n = 0

        def update(self, k):
            self.n += k
    bar = Bar()
    assert sorted(_run_on_ray(jobs, 2, bar)) == [1, 1]                   # 2 workers, 1 load each
    assert bar.n == 3 and all(Path(j[1], "summary.json").exists() for j in jobs)
    table = run_study(path, tmp_path, progress=False, log=lambda _: None)   # all done: read back
    assert len(table) == 3 and (table.backend_calls_per_step == 1).all()


@pytest.mark.parametrize("text, message", [
    ('scenario = "theory_moralis"\n[grid]\n"firm.kappa" = []', "must be a non-empty list"),
    ('scenario = "theory_moralis"\n[grid]\n"kappa" = [0.5]', "must be section.key"),
    ('scenario = "theory_moralis"\n[grid]\n"firm.kappa" = [1.5]', "kappa"),
    ('scenario = "nowhere"\n[grid]\n"firm.kappa" = [0.5]', "does not exist"),
    ('scenario = "theory_moralis"\n[grid]\n"firm.kappa" = [0.5]\n[study]\nexecutor = "dask"', "executor"),
    ('scenario = "theory_moralis"\nsweep = 1\n[grid]\n"firm.kappa" = [0.5]', "sweep"),
])
def test_bad_study_files_get_one_line_errors(tmp_path, text, message):
    path = tmp_path / "study.toml"
    path.write_text(text)
    exe = Path(sys.executable).parent / "econalign"
    result = subprocess.run([str(exe), "study", "run", str(path), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_bundled_studies_are_valid():
    for path in (Path(__file__).resolve().parents[1] / "scenarios" / "studies").glob("*.toml"):
        assert load_study(path).cells()
