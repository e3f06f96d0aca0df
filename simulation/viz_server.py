"""`econalign viz MODEL`: Mesa's SolaraViz page of one model (simulation/<model>_app.py), served
by `solara run` on the loopback until Ctrl-C or SIGTERM (either stops the server too). The page's
assets are checked first (simulation.viz_assets): without them it would stay blank offline. The
page runs the LLM on request and has no password, so another --host needs --allow-remote."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from agents.errors import InputError
from agents.llm.server import bind_host, check_exposure, http_url, sigterm_unwinds
from simulation.viz_assets import cache_folder, missing_assets

APPS = Path(__file__).parent


def run_viz(args) -> int:
    if check_exposure(args.host, args.allow_remote, "econalign viz"):
        print(f"econalign: warning: the visual server at {http_url(args.host, args.port)} has no password "
              "and runs the model for anyone who reaches it, in plain HTTP", file=sys.stderr)
    solara = shutil.which("solara", path=str(Path(sys.executable).parent)) or shutil.which("solara")
    if solara is None:
        raise InputError("the visual server needs the viz extra: pip install -e '.[viz]'")
    if not Path(args.adapters).is_dir() and args.adapters != "adapters":
        raise InputError(f"--adapters {args.adapters} is not a folder")
    missing = missing_assets()
    if missing:
        raise InputError(f"the page would stay blank offline: {len(missing)} of its files are not in "
                         f"{cache_folder()} (first: {missing[0]}); install them with pip install -e '.[viz]' "
                         "(the solara-assets package)")
    env = {**os.environ, "ECONALIGN_ADAPTERS": str(Path(args.adapters).resolve())}
    print(f"visual server for the {args.model} model at {http_url(args.host, args.port)} (Ctrl-C stops it)",
          flush=True)
    server = subprocess.Popen([solara, "run", str(APPS / f"{args.model}_app.py"), "--host", bind_host(args.host),
                               "--port", str(args.port), "--production", "--no-open", "--no-check-version"], env=env)
    with sigterm_unwinds():         # else SIGTERM ends this process and leaves the server running
        try:
            return server.wait()
        finally:
            if server.poll() is None:
                server.terminate()
                server.wait(timeout=10)


def add_commands(commands) -> None:
    viz = commands.add("viz", run_viz, "the interactive visual server (Mesa SolaraViz) for a model")
    viz.add_argument("model", choices=("market", "av"), help="market: Bertrand pricing; av: AV traffic")
    viz.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1; others need --allow-remote)")
    viz.add_argument("--allow-remote", action="store_true",
                     help="allow a --host other machines reach: the page has no password and runs the model")
    viz.add_argument("--port", type=int, default=8765, help="port to listen on")
    viz.add_argument("--adapters", default="adapters", help="adapter folder for LLM decision makers")
