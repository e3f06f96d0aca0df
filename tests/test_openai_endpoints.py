"""Any OpenAI-compatible endpoint (issue 51): the backend probes what the endpoint offers; the
plain chat API (hosted models, llama.cpp, Ollama) serves generated answers, and a run that needs
scored options is refused before its first step; a template that refuses a system role gets it
in the first user turn. Against tests/fake_server.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.errors import InputError
from agents.llm.backend import Request
from agents.llm.openai_backend import OpenAIBackend

ECONALIGN = str(Path(sys.executable).parent / "econalign")
ASK = Request.chat([{"role": "system", "content": "You set prices."}, {"role": "user", "content": "Your price?"}],
                   options=("ANSWER: 1.5", "ANSWER: 1.8"))


def _market(tmp_path: Path, url: str, prices: str) -> Path:
    scenario = tmp_path / f"{prices}.toml"
    scenario.write_text(f'name = "{prices}"\n[llm]\nbackend = "openai"\nurl = "{url}"\nretries = 0\n'
                        '[run]\nsteps = 3\n'
                        f'[[firm]]\ntype = "llm"\nprices = "{prices}"\n[[firm]]\ntype = "llm"\nprices = "{prices}"\n')
    return scenario


def test_a_plain_chat_endpoint_generates_and_refuses_to_choose_in_one_line(fake_server):
    """No /openapi.json listing and no /tokenize: generate works (the thinking is not the answer);
    choose is an InputError that says what to use instead."""
    fake_server.mode = "plain"
    backend = OpenAIBackend(fake_server.url, retries=0)
    assert backend.offers() == {"tokenize": False, "scores": False}
    assert "plain OpenAI chat API" in backend.describe() and "generate only" in backend.describe()
    assert backend.generate([ASK]) == ["ANSWER: 1.8"]
    with pytest.raises(InputError, match=r'econalign serve.*prices = "free"'):
        backend.choose([ASK])
    assert backend.context_length is None                # nothing to measure prompts with


def test_a_vllm_endpoint_is_found_from_its_route_listing_without_asking_the_model(fake_server):
    backend = OpenAIBackend(fake_server.url, retries=0)
    assert backend.offers() == {"tokenize": True, "scores": True}
    assert "choose" in backend.describe() and fake_server.hits == {}     # a GET: nothing asked of the model
    assert backend.choose([ASK])[0].shape == (2,)


def test_a_plain_endpoint_runs_free_prices_and_refuses_grid_prices_before_the_first_step(fake_server, tmp_path):
    """Through the CLI: an LLM duopoly writing its prices exits 0 against the plain chat API; one
    picking grid prices exits 2 with one line before anything runs (no decision asked or logged)."""
    fake_server.mode = "plain"
    free = subprocess.run([ECONALIGN, "market", "run", str(_market(tmp_path, fake_server.url, "free")), "--out",
                           str(tmp_path / "free")], capture_output=True, text=True, timeout=300)
    assert free.returncode == 0, free.stderr
    summary = json.loads((tmp_path / "free" / "summary.json").read_text())
    assert summary["invalid_decisions"] == 0
    assert summary["sessions"][0]["price_0"] == pytest.approx(1.8)
    asked = fake_server.hits.get("/v1/chat/completions", 0)
    grid = subprocess.run([ECONALIGN, "market", "run", str(_market(tmp_path, fake_server.url, "grid")), "--out",
                           str(tmp_path / "grid")], capture_output=True, text=True, timeout=300)
    assert grid.returncode == 2 and len(grid.stderr.strip().splitlines()) == 1, grid.stderr
    assert "plain OpenAI chat API" in grid.stderr and 'prices = "free"' in grid.stderr
    assert fake_server.hits.get("/v1/chat/completions", 0) == asked
    log = tmp_path / "grid" / "decisions.jsonl"
    assert not log.exists() or not log.read_text()


def test_a_template_that_refuses_a_system_role_gets_it_in_the_first_user_turn(fake_server):
    """The server answers 400 "System role not supported" to a chat with a system message: the
    backend asks again with the system text folded into the first user turn, and from then on."""
    fake_server.mode = "nosystem"
    backend = OpenAIBackend(fake_server.url, retries=0)
    assert backend.generate([ASK]) == ["ANSWER: 1.8"]
    probabilities = backend.choose([ASK])[0]
    assert probabilities.shape == (2,) and abs(probabilities.sum() - 1) < 1e-9
    refused = fake_server.hits["/v1/chat/completions"]
    assert backend.generate([ASK]) == ["ANSWER: 1.8"]
    assert fake_server.hits["/v1/chat/completions"] == refused + 1          # folded at once now


def test_a_template_that_moves_the_system_text_is_scored_on_the_prompt_the_model_reads(fake_server):
    """Mistral v0.3's template leaves the system text out once an answer follows, so the chat with
    its answer does not extend the prompt's tokens: the answer's tokens are then the template's
    lead, the answer and its end of turn on their own (from the server's /detokenize and
    /tokenize), the same as where the template extends the prompt; the prompt keeps the system."""
    good = OpenAIBackend(fake_server.url, retries=0).option_logprobs([ASK])[0]
    fake_server.mode = "mistral"
    backend = OpenAIBackend(fake_server.url, retries=0)
    moved = backend.option_logprobs([ASK])[0]
    assert moved == pytest.approx(good, abs=1e-12)
    assert backend._option_cache[("", "ANSWER: 1.5")] == [*map(ord, "ANSWER: 1.5"), 0]
    assert fake_server.hits["/detokenize"] == 2              # the template's parts, asked once
