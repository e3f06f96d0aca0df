"""The code of every tutorial, of Getting started and of the README runs as written.

A page's fenced blocks run in order in one working folder (a fresh temporary folder per page),
as a reader would run them there with the project's .venv on the PATH:
- ```python blocks run in one namespace per page;
- ```bash blocks run in bash (`set -euo pipefail`); a command ending in `&` keeps running in the
  background until the page ends, then it is stopped (SIGTERM to its process group);
- a block after `<!-- file: NAME -->` is written to NAME (a scenario or study file the page shows);
- `<!-- test: wait URL [SECONDS] -->` waits until URL answers (a server the page started);
- `<!-- test: replace OLD => NEW -->` runs (or writes, after a file directive) the next block
  with OLD replaced by NEW: the size a page declares for its test (fewer steps or examples)
  where the page shows a reader's size; the block must contain OLD, so the page cannot drift
  from its test;
- ```text blocks are shown, not run (output, or a command that takes an hour).
Ports (`--port N`) are swapped for free ones so that the pages never meet another server.
Pages that start "after `make demo`" get its adapters' folder (random LoRA weights under the main
job's names, conftest.make_adapter): the code must run, the adapters' quality is another test's."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import built_once, make_adapters

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs" / "tutorials").glob("*.md")), ROOT / "docs" / "getting-started.md",
         ROOT / "README.md"]
# the pages whose code runs after `make demo`, which leaves adapters/economicus and adapters/moralis-0.5
AFTER_MAIN_JOB = {"first-market.md", "visual-server.md", "serving-vllm.md", "README.md"}
RUNNABLE = {"python", "bash"}
FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*(file|test):\s*(.*?)\s*-->\s*$")


@dataclass
class Step:
    kind: str          # python, bash, file, wait
    text: str          # the code, the file's content, or the URL
    target: str = ""   # file: its name; wait: the seconds to wait
    line: int = 0


def steps(page: Path) -> list[Step]:
    """The page's runnable steps, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, pending_file, replacements, i = [], None, [], 0
    while i < len(lines):
        directive = DIRECTIVE.match(lines[i])
        fence = FENCE.match(lines[i])
        if directive and directive.group(1) == "file":
            pending_file = directive.group(2)
        elif directive and directive.group(2).startswith("replace "):
            old, arrow, new = directive.group(2).removeprefix("replace ").partition(" => ")
            assert arrow and old, f"{page.name}:{i + 1}: write <!-- test: replace OLD => NEW -->"
            replacements.append((old, new, i + 1))
        elif directive:
            words = directive.group(2).split()
            assert words[0] == "wait" and len(words) in (2, 3), f"{page.name}:{i + 1}: unknown directive {lines[i]}"
            out.append(Step("wait", words[1], words[2] if len(words) == 3 else "120", i + 1))
        elif fence:
            language, start = fence.group(1), i + 1
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            body = "\n".join(lines[start:i]) + "\n"
            if pending_file or language in RUNNABLE:
                for old, new, where in replacements:
                    assert old in body, f"{page.name}:{where}: the next block has no {old!r} to replace"
                    body = body.replace(old, new)
                replacements = []
            if pending_file:
                out.append(Step("file", body, pending_file, start))
                pending_file = None
            elif language in RUNNABLE:
                out.append(Step(language, body, "", start))
        i += 1
    assert pending_file is None, f"{page.name}: <!-- file: {pending_file} --> is not followed by a block"
    assert not replacements, f"{page.name}:{replacements[0][2]}: a replace directive with no block after it"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_free_ports(page_steps: list[Step]) -> list[Step]:
    """Every port a page starts a server on (`--port N`), swapped for a free one everywhere."""
    ports = {p for s in page_steps for p in re.findall(r"--port (\d+)", s.text)}
    swap = {p: str(free_port()) for p in ports}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, ports)) + r")\b") if ports else None

    def fix(text: str) -> str:
        return pattern.sub(lambda m: swap[m.group(1)], text) if pattern else text
    return [Step(s.kind, fix(s.text), s.target, s.line) for s in page_steps]


def wait_for(url: str, seconds: float, servers: list) -> None:
    """Until `url` answers 200; at once an AssertionError with the servers' output when every
    process the page left running has ended (a server that stopped on an error)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(group_alive(process.pid) for process, _ in servers):
            deadline = 0
            break
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    logs = "\n".join(Path(log).read_text(errors="replace")[-2000:] for _, log in servers)
    why = "every server the page started has ended" if deadline == 0 else f"no answer within {seconds} s"
    raise AssertionError(f"{url}: {why}; the servers said:\n{logs}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop(servers: list) -> None:
    """Every process the page's blocks left running: SIGTERM to its group, SIGKILL after 30 s."""
    for process, _ in servers:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not group_alive(process.pid):
                break
            os.killpg(process.pid, sig)
            deadline = time.monotonic() + 30
            while group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
        process.wait()


def run_page(page: Path, folder: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    namespace: dict = {"__name__": "__tutorial__"}
    servers: list = []
    here = os.getcwd()
    os.chdir(folder)
    try:
        page_steps = steps(page)
        if page.name == "README.md":      # its bash blocks are `make demo` and `make test`, this suite's own
            page_steps = [s for s in page_steps if s.kind == "python"]
        for n, step in enumerate(with_free_ports(page_steps)):
            where = f"{page.name}:{step.line}"
            if step.kind == "file":
                (folder / step.target).write_text(step.text)
            elif step.kind == "wait":
                wait_for(step.text, float(step.target), servers)
            elif step.kind == "python":
                exec(compile(step.text, where, "exec"), namespace)   # noqa: S102  (the page's own code)
            else:
                log = folder / f".block-{n}.log"
                with open(log, "w") as out:
                    process = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + step.text], cwd=folder, env=env,
                                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               start_new_session=True)
                    servers.append((process, log))
                    rc = process.wait(timeout=1800)
                assert rc == 0, f"{where}: the bash block exited {rc}:\n{log.read_text(errors='replace')[-3000:]}"
    finally:
        os.chdir(here)
        stop(servers)


@pytest.fixture(scope="session")   # session, built once: under xdist the pages are groups of their own
def main_job_adapters(tmp_path_factory, model_folder) -> Path:
    return built_once(tmp_path_factory, "main-job-adapters",
                      lambda folder: make_adapters(model_folder, folder, {"economicus": 11, "moralis-0.5": 12}))


def test_every_page_has_code_that_runs_and_names_known_blocks():
    """Each tutorial has runnable code; every fenced block is python, bash, toml behind a file
    directive, or text (so a block in a language the runner skips cannot hide a broken page)."""
    for page in PAGES:
        page_steps = steps(page)
        assert any(s.kind in RUNNABLE for s in page_steps), f"{page.name} has no runnable block"
        languages = set(re.findall(r"^```(\w+)\s*$", page.read_text(), flags=re.M))
        assert languages <= {"python", "bash", "toml", "text"}, f"{page.name}: blocks in {languages}"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_runs_as_written(page, tmp_path, main_job_adapters, model_folder):
    """Slow: each page runs a reader's commands on the embedded model: new-preference trains and
    evaluates an adapter (about 3 minutes at the size the page declares for its test),
    serving-vllm starts vLLM (about 2 minutes), the others run markets, AVs and studies."""
    if page.name == "serving-vllm.md" and not (ROOT / ".venv-vllm" / "bin" / "python").exists():
        pytest.fail("serving-vllm.md needs .venv-vllm: run `make vllm` (make test does)")
    if page.name in AFTER_MAIN_JOB:
        shutil.copytree(main_job_adapters, tmp_path / "adapters")
    run_page(page, tmp_path)


def test_a_page_declares_its_test_size_for_the_next_block_only(tmp_path):
    """`<!-- test: replace OLD => NEW -->` changes the next runnable block and no other; a block
    without OLD, or a directive with no block after it, fails the page (the page drifted)."""
    page = tmp_path / "page.md"
    page.write_text("<!-- test: replace --steps 8 => --steps 2 -->\n```bash\nrun --steps 8\n```\n"
                    "```bash\nrun --steps 8\n```\n")
    assert [s.text for s in steps(page)] == ["run --steps 2\n", "run --steps 8\n"]
    page.write_text("<!-- test: replace --steps 9 => --steps 2 -->\n```bash\nrun --steps 8\n```\n")
    with pytest.raises(AssertionError, match="no '--steps 9' to replace"):
        steps(page)
    page.write_text("```bash\nrun\n```\n<!-- test: replace a => b -->\n")
    with pytest.raises(AssertionError, match="no block after it"):
        steps(page)
    page.write_text("<!-- file: s.toml -->\n<!-- test: replace steps = 3 => steps = 1 -->\n```toml\nsteps = 3\n```\n"
                    "```bash\nrun s.toml\n```\n")
    assert [(s.kind, s.text) for s in steps(page)] == [("file", "steps = 1\n"), ("bash", "run s.toml\n")]
