"""`llmlens serve`: the OpenAI-compatible server, driven by the real `openai` client.

One uvicorn server per module runs in a background thread on 127.0.0.1 (a free port) over a
tiny llama. References are computed here with `engine.generate` on the same model. Requests
that must be held mid-generation (disconnect, arrival order, a full queue) use a `Gate` around
`model.forward`: closed, every forward pass waits for a permit, so the tests control exactly
where the engine is without ever depending on how fast it runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import uvicorn

from app.engine_worker import PromptRequest, build_prompt
from app.server.app import create_app
from engine.generate import Done, generate
from engine.models.base import load_model
from engine.sampling import SamplingParams
from engine.tokenizer import load_tokenizer
from tests.fixtures.tiny_models import tiny_model_factory  # noqa: F401 (fixture)

GREEDY = SamplingParams(temperature=0)
WAIT_S = 60.0  # upper bound for waits on the server's state; a pass never comes near it
WORDS = ("the of and to in is was for on that with as by at from it his an were are").split()


# -- helpers (tests/test_remote_backend.py imports these) -----------------------------------------

class Gate:
    """Wraps a model's forward. Open: calls pass. Closed: each call takes one permit, waiting
    for one if there is none; `waiting` counts the calls blocked right now."""

    def __init__(self, forward: Callable) -> None:
        self._forward = forward
        self._cond = threading.Condition()
        self._permits: int | None = None  # None: open
        self.waiting = 0

    def __call__(self, *args, **kwargs):
        with self._cond:
            self.waiting += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._permits is None or self._permits > 0, WAIT_S)
            if self._permits:
                self._permits -= 1
            self.waiting -= 1
            self._cond.notify_all()
        return self._forward(*args, **kwargs)

    def close(self, permits: int = 0) -> None:
        with self._cond:
            self._permits = permits
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._permits = None
            self._cond.notify_all()


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def running_server(app) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yields the base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "the server to start")
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT_S)


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    """(model, tokenizer, gate, path) for a tiny llama whose forward goes through a Gate."""
    path = tiny_model_factory("llama").gguf["f32"]
    model = load_model(path)
    gate = Gate(model.forward)
    model.forward = gate
    return model, load_tokenizer(model.gguf), gate, path


@pytest.fixture(scope="module")
def served(tiny):
    """(base URL, Server) of the module's server: queue 32, 64 KiB bodies, no key."""
    model, tok, gate, _ = tiny
    app = create_app(model, tok, model_name="tiny-llama", max_queue=32, max_body_bytes=64 << 10)
    with running_server(app) as url:
        yield url, app.state.server


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0,
                         timeout=WAIT_S)


def reference(model, tok, ids, n, stop=()) -> Done:
    events = list(generate(model, tok, ids, GREEDY, max_new_tokens=n, stop_strings=stop))
    return events[-1]


def chat_ids(tok, model, messages) -> list[int]:
    req = PromptRequest(mode="chat", system_prompt="",
                        messages=tuple((m["role"], m["content"]) for m in messages))
    return build_prompt(tok, model.gguf.metadata, req)[1]


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the river"}]


# -- OpenAI endpoints ------------------------------------------------------------------------------

def test_models_and_health(served, client):
    url, _ = served
    assert [m.id for m in client.models.list().data] == ["tiny-llama"]
    r = httpx.get(url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_chat_greedy_equals_engine_generate(tiny, client):
    model, tok, _, _ = tiny
    ids = chat_ids(tok, model, MESSAGES)
    want = reference(model, tok, ids, 8)
    r = client.chat.completions.create(model="x", messages=MESSAGES, temperature=0, max_tokens=8)
    assert r.choices[0].message.content == want.text
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ("length" if want.reason == "length" else "stop")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), want.timings.gen_tokens)
    assert r.usage.total_tokens == len(ids) + want.timings.gen_tokens
    t = r.model_extra["timings"]
    # processed + taken from the kept cache = the whole prompt (llama.cpp's prompt_n / cache_n)
    assert t["prompt_n"] + t["cache_n"] == len(ids) and t["prompt_n"] >= 1
    assert t["predicted_n"] == want.timings.gen_tokens
    assert set(t) == {"cache_n", "prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second",
                      "predicted_n", "predicted_ms", "predicted_per_token_ms",
                      "predicted_per_second"}

    # streamed: the same text; the finish chunk and the usage chunk (the last) carry timings
    chunks = list(client.chat.completions.create(
        model="x", messages=MESSAGES, temperature=0, max_tokens=8, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and "timings" in finish[0].model_extra
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == want.timings.gen_tokens
    assert last.usage.prompt_tokens == len(ids)
    assert last.model_extra["timings"]["predicted_n"] == want.timings.gen_tokens


def test_completions_text_ids_and_stream(tiny, client):
    model, tok, _, _ = tiny
    prompt = "the quick brown fox"
    ids = tok.encode(prompt, add_special=True, parse_special=True)
    want = reference(model, tok, ids, 6)
    r = client.completions.create(model="x", prompt=prompt, temperature=0, max_tokens=6)
    assert r.choices[0].text == want.text
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), want.timings.gen_tokens)
    assert "timings" in r.model_extra
    r_ids = client.completions.create(model="x", prompt=ids, temperature=0, max_tokens=6)
    assert r_ids.choices[0].text == want.text
    chunks = list(client.completions.create(model="x", prompt=prompt, temperature=0,
                                            max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason is not None and "timings" in chunks[-1].model_extra


def test_stop_strings_and_sampling_fields(tiny, client):
    model, tok, _, _ = tiny
    prompt = "the city and the river"
    ids = tok.encode(prompt, add_special=True, parse_special=True)
    full = reference(model, tok, ids, 16).text
    text = full.strip()
    assert len(text) >= 4, f"reference too short to cut: {full!r}"
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = full[:full.find(stop)]
    for stream in (False, True):
        r = client.completions.create(model="x", prompt=prompt, temperature=0, max_tokens=16,
                                      stop=[stop, "never-appears"], stream=stream)
        if stream:
            chunks = list(r)
            got, finish = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0]
        else:
            got, finish = r.choices[0].text, r.choices[0]
        assert got == cut and finish.finish_reason == "stop"

    # llama.cpp's extra sampling fields are honoured: the same seed gives the same text, and
    # top_k 1 is greedy whatever the temperature
    extra = {"top_k": 1, "min_p": 0.0, "repeat_penalty": 1.0}
    r = client.completions.create(model="x", prompt=prompt, temperature=1.5, max_tokens=16,
                                  seed=7, extra_body=extra)
    assert r.choices[0].text == full
    sampled = [client.completions.create(model="x", prompt=prompt, temperature=1.0, seed=11,
                                         max_tokens=8, top_p=0.9).choices[0].text
               for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_disconnect_mid_stream_stops_generation(tiny, served, client):
    model, tok, gate, _ = tiny
    _, server = served
    engine = server.engine
    gate.close(permits=3)  # the prompt pass and two decode steps, then the engine waits
    try:
        stream = client.chat.completions.create(model="x", messages=MESSAGES, temperature=0,
                                                max_tokens=100, stream=True)
        first = next(iter(stream))  # the role chunk: the prompt has been processed
        assert first.choices[0].delta.role == "assistant"
        wait_until(lambda: gate.waiting == 1 and engine.running is not None,
                   "the engine to block mid-generation")
        job = engine.running
        stream.close()
        wait_until(job.cancelled.is_set, "the server to notice the disconnect")
    finally:
        gate.open()
    wait_until(lambda: any(f.seq == job.seq for f in engine.finished), "the job to end")
    rec = next(f for f in engine.finished if f.seq == job.seq)
    # three tokens came before the disconnect; the step in flight may finish, no more
    assert rec.reason == "cancelled" and 3 <= rec.n_tokens <= 4
    r = client.chat.completions.create(model="x", messages=MESSAGES, temperature=0, max_tokens=2)
    assert r.choices[0].message.content is not None  # served after the disconnect


def test_disconnect_while_waiting_for_a_non_streamed_answer(tiny, served):
    model, tok, gate, _ = tiny
    url, server = served
    engine = server.engine
    gate.close()  # the engine blocks in the prompt pass: no answer can come
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and hangs up
            httpx.post(url + "/v1/completions", json={"prompt": "the", "max_tokens": 50},
                       timeout=httpx.Timeout(WAIT_S, read=0.5))
        wait_until(lambda: engine.running is not None, "the request to run")
        job = engine.running
        wait_until(job.cancelled.is_set, "the server to notice the disconnect")
    finally:
        gate.open()
    wait_until(lambda: any(f.seq == job.seq for f in engine.finished), "the job to end")
    rec = next(f for f in engine.finished if f.seq == job.seq)
    assert rec.reason == "cancelled" and rec.n_tokens <= 1


def test_twenty_clients_answered_in_arrival_order(tiny, served, client):
    model, tok, gate, _ = tiny
    _, server = served
    engine = server.engine
    prompts = [f"the {w}" for w in WORDS[:20]]
    want = [reference(model, tok, tok.encode(p, add_special=True, parse_special=True), 2).text
            for p in prompts]
    results: list = [None] * len(prompts)

    def ask(i: int) -> None:
        results[i] = client.completions.create(model="x", prompt=prompts[i], temperature=0,
                                               max_tokens=2)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    gate.close()
    try:
        threads[0].start()  # runs, and blocks in its prompt pass
        wait_until(lambda: engine.running is not None and gate.waiting == 1, "request 0 to run")
        for i, th in enumerate(threads[1:], 1):  # each arrives after the previous is queued
            th.start()
            wait_until(lambda: engine.queued == i, f"request {i} to be queued")
    finally:
        gate.open()
    for th in threads:
        th.join(WAIT_S)
    assert [r.choices[0].text for r in results] == want  # nothing lost or swapped
    seqs = [int(r.id.rsplit("-", 1)[1]) for r in results]
    assert seqs == sorted(seqs)  # numbered in arrival order ...
    # the engine files its record just after the answer's last event: wait for all of them
    wait_until(lambda: {f.seq for f in engine.finished} >= set(seqs), "the engine's records")
    served_order = [f.seq for f in engine.finished if f.seq in set(seqs)]
    assert served_order == seqs  # ... and run in that order
    assert all(f.reason == "length" for f in engine.finished if f.seq in set(seqs))


LONG = " ".join(WORDS * 20)  # far more than the tiny model's 256-token context

BAD_REQUESTS = [
    # (path, body (bytes: sent as is), status, param)
    ("/v1/chat/completions", b'{"messages": [', 400, None),
    ("/v1/chat/completions", b'[1, 2]', 400, None),
    ("/v1/chat/completions", b'\xff\xfe', 400, None),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], '
                             b'"temperature": NaN}', 400, None),
    ("/v1/chat/completions", {"messages": "hello"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400,
     "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -5}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10**12}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_completion_tokens": "many"}, 400,
     "max_completion_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 2}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_k": 1.5}, 400, "top_k"),
    ("/v1/completions", {"prompt": "x", "seed": "s"}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "stop": [1, 2]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": "x", "logprobs": 3}, 400, "logprobs"),
    ("/v1/completions", {"prompt": 42}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 2, 99999]}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": LONG}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x" * (80 << 10)}, 413, None),
    ("/v1/lens/trace", {"ids": [1, 2], "prompt": "x"}, 400, "prompt"),
    ("/v1/lens/trace", {"prompt": "x", "what": ["everything"]}, 400, "what"),
    ("/v1/lens/trace", {"prompt": "the river", "rows": [2, 99]}, 400, "rows"),
    ("/v1/lens/trace", {"ids": [1, -3]}, 400, "ids"),
    ("/v1/nowhere", {}, 404, None),
]


@pytest.mark.parametrize("path,body,status,param", BAD_REQUESTS,
                         ids=[f"{i}-{c[0].rsplit('/', 1)[1]}-{c[2]}"
                              for i, c in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_error_objects(served, path, body, status, param):
    url, _ = served
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + path, content=content, headers={"Content-Type": "application/json"},
                   timeout=WAIT_S)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    assert httpx.get(url + "/health").json()["status"] == "ok"  # still serving


def test_openai_client_sees_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="x", messages=MESSAGES, n=3)
    assert exc.value.status_code == 400 and "n must be 1" in str(exc.value)


def test_lens_trace_matches_engine_inspect(tiny, served):
    from engine.inspect import inspect

    model, tok, _, _ = tiny
    url, _ = served
    ids = tok.encode("the quick brown fox jumps", add_special=True, parse_special=True)
    r = httpx.post(url + "/v1/lens/trace",
                   json={"ids": ids, "what": ["attention", "lens"], "rows": [1, 4]},
                   timeout=WAIT_S)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    got = np.load(io.BytesIO(r.content))
    want = inspect(model, ids, what=("attention", "lens"), rows=(1, 4), lens_k=10)
    assert set(got.files) == ({"ids", "rows"} | {f"attn.{i}" for i in want.attn}
                              | {f"lens_ids.{i}" for i in want.lens_ids}
                              | {f"lens_logits.{i}" for i in want.lens_logits})
    np.testing.assert_array_equal(got["ids"], ids)
    np.testing.assert_array_equal(got["rows"], [1, 4])
    for layer, arr in want.attn.items():
        np.testing.assert_allclose(got[f"attn.{layer}"], arr, rtol=1e-5, atol=1e-6)
    for layer, arr in want.lens_ids.items():
        np.testing.assert_array_equal(got[f"lens_ids.{layer}"], arr)
    # the same arrays from a chat: the messages rendered as /v1/chat/completions renders them
    r = httpx.post(url + "/v1/lens/trace", json={"messages": MESSAGES, "what": ["lens"]},
                   timeout=WAIT_S)
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content))["ids"],
                                  chat_ids(tok, model, MESSAGES))


def test_lens_trace_routing_on_a_moe_model(tiny_model_factory):
    from engine.inspect import inspect

    model = load_model(tiny_model_factory("qwen2moe").gguf["f32"])
    tok = load_tokenizer(model.gguf)
    ids = tok.encode("the river and the city", add_special=True, parse_special=True)
    with running_server(create_app(model, tok, model_name="moe")) as url:
        r = httpx.post(url + "/v1/lens/trace", json={"ids": ids, "what": ["routing"]},
                       timeout=WAIT_S)
    assert r.status_code == 200, r.text
    got = np.load(io.BytesIO(r.content))
    want = inspect(model, ids, what=("routing",))
    assert want.topk_ids and not any(k.startswith(("attn.", "lens_")) for k in got.files)
    for layer in want.topk_ids:
        np.testing.assert_array_equal(got[f"topk_ids.{layer}"], want.topk_ids[layer])
        np.testing.assert_allclose(got[f"topk_weights.{layer}"], want.topk_weights[layer],
                                   rtol=1e-5, atol=1e-7)
        assert got[f"router_probs.{layer}"].shape == want.router_probs[layer].shape


# -- auth, queue, CLI ------------------------------------------------------------------------------

def test_api_key_required_except_health(tiny):
    model, tok, _, _ = tiny
    app = create_app(model, tok, model_name="tiny-llama", api_key="s3cret")
    with running_server(app) as url:
        assert httpx.get(url + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.get(url + "/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(url + "/v1/lens/trace", json={"prompt": "x"})
        assert r.status_code == 401
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        right = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        r = right.completions.create(model="x", prompt="the", max_tokens=2, temperature=0)
        assert r.choices[0].finish_reason in ("length", "stop")


def test_full_queue_answers_503(tiny):
    model, tok, gate, _ = tiny
    app = create_app(model, tok, model_name="tiny-llama", max_queue=1)
    engine = app.state.server.engine
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=WAIT_S)
        out: dict = {}

        def ask(key: str) -> None:
            out[key] = client.completions.create(model="x", prompt="the", max_tokens=2,
                                                 temperature=0)

        a, b = threading.Thread(target=ask, args=("a",)), threading.Thread(target=ask, args=("b",))
        gate.close()
        try:
            a.start()
            wait_until(lambda: engine.running is not None and gate.waiting == 1, "a to run")
            b.start()
            wait_until(lambda: engine.queued == 1, "b to wait")
            r = httpx.post(url + "/v1/completions", json={"prompt": "the", "max_tokens": 2})
            assert r.status_code == 503 and r.headers["Retry-After"].isdigit()
            assert r.json()["error"]["code"] == "server_busy"
            with pytest.raises(openai.APIStatusError) as exc:
                client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=2)
            assert exc.value.status_code == 503
        finally:
            gate.open()
        a.join(WAIT_S)
        b.join(WAIT_S)
        assert out["a"].choices[0].text == out["b"].choices[0].text  # same greedy request
        wait_until(lambda: httpx.get(url + "/health").json() == {
            "status": "ok", "busy": False, "queued": 0}, "the server to be idle again")


def test_cli_refuses_public_address_without_key(capsys):
    from app.cli import main

    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "without --api-key" in capsys.readouterr().err


def test_cli_serves_prints_one_line_and_stops_on_ctrl_c(tiny):
    path = tiny[3]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LLMLENS_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", str(path), "--port", "0",
                             "-t", "1"], cwd=Path(__file__).resolve().parents[1], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith(f"llmlens serve: {Path(path).stem} on http://127.0.0.1:"), line
        assert line.endswith("(n_ctx 256, 1 threads)"), line
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        r = httpx.post(url + "/v1/completions", json={"prompt": "the", "max_tokens": 2},
                       timeout=WAIT_S)
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT_S) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_default_model_chat_equals_engine(default_model):
    model = load_model(default_model)
    tok = load_tokenizer(model.gguf)
    messages = [{"role": "user", "content": "Name a colour."}]
    ids = chat_ids(tok, model, messages)
    want = reference(model, tok, ids, 12)
    app = create_app(model, tok, model_name="default")
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
        r = client.chat.completions.create(model="default", messages=messages, temperature=0,
                                           max_tokens=12)
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == len(ids)
