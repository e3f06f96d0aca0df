"""The visual servers (Mesa SolaraViz): the apps' models reach the theory's prices and thresholds
from their controls, every page renders, and `econalign viz` serves it over HTTP."""
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

solara = pytest.importorskip("solara", reason="the viz extra is installed by `make test`")

from agents.equilibria import symmetric_equilibrium  # noqa: E402
from agents.preferences import preference  # noqa: E402
from browser import free_port  # noqa: E402
from markets.bertrand import LogitBertrand  # noqa: E402
from simulation import av_app, market_app  # noqa: E402

P_N, P_M = 1.472927, 1.924981      # Calvano et al. (2020) baseline Nash and monopoly prices


@pytest.mark.parametrize("kappa, first, target", [
    (0.0, "theory: homo economicus", P_N), (0.5, "theory: homo moralis", None),
    (1.0, "theory: homo moralis", P_M)])
def test_market_app_theory_firms_settle_within_a_grid_step_of_the_equilibrium(kappa, first, target):
    model = market_app.MarketApp(firms=2, first=first, rivals=first, kappa=kappa)
    for _ in range(30):
        model.step()
    if target is None:
        target = symmetric_equilibrium(preference("moralis", kappa), LogitBertrand().firm(0)).strategy
    step = float(model.grid[0, 1] - model.grid[0, 0])
    assert abs(model.last_prices - target).max() <= step + 1e-9   # a grid equilibrium beside it


def test_av_app_economicus_never_swerves_and_moralis_follows_its_threshold():
    for decider, kappa in (("theory: homo economicus", 0.0), ("theory: homo moralis", 0.5)):
        model = av_app.AVApp(avs=20, decider=decider, kappa=kappa, brake_failure=0.5, seed=3)
        for _ in range(60):
            model.step()
        data = model.dilemma_data()
        assert len(data) > 5
        swerve = data.action == "swerve"
        assert (swerve == (kappa > data.kappa_threshold)).all()     # swerve iff kappa > W_P / W_N
        if kappa == 0.0:
            assert not swerve.any() and model.step_data().killed_passengers.sum() == 0


def test_pages_render_and_unknown_decision_makers_are_refused():
    for page in (market_app.page, av_app.page):
        box, _ = solara.render(page, handle_error=False)
        assert "TabsItems" in repr(box)
    with pytest.raises(ValueError, match="decision maker must be one of"):
        market_app.MarketApp(first="altruist")


def _port_closed(port: int, seconds: float = 20) -> bool:
    """Whether nothing accepts connections on `port` within `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return True
        time.sleep(0.5)
    return False


def test_viz_command_serves_the_page_and_stops():
    port = free_port()
    exe = Path(sys.executable).parent / "econalign"
    server = subprocess.Popen([str(exe), "viz", "av", "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline, status = time.time() + 120, None
        while time.time() < deadline and status != 200:
            time.sleep(1)
            assert server.poll() is None, server.stdout.read()
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status
            except OSError:
                pass
        assert status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert _port_closed(port), "the solara server outlived `econalign viz` after SIGTERM"
    bad = subprocess.run([str(exe), "viz", "traffic"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "invalid choice" in bad.stderr
