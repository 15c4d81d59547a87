"""app/remote_backend.py: the OpenAI client the app will use for a remote model.

The happy paths run against `llmlens serve` (a uvicorn thread over a tiny llama, as in
test_serve.py); the failures are real sockets: a port nobody listens on, a server that never
answers, one that answers 500, one whose stream stops halfway.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from app.remote_backend import Done, OpenAIClient, PromptDone, Token
from app.server.app import create_app
from engine.models.base import load_model
from engine.tokenizer import load_tokenizer
from tests.fixtures.tiny_models import tiny_model_factory  # noqa: F401 (fixture)
from tests.test_serve import MESSAGES, chat_ids, reference, running_server

KEY = "k3y"


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    model = load_model(tiny_model_factory("llama").gguf["f32"])
    return model, load_tokenizer(model.gguf)


@pytest.fixture(scope="module")
def url(tiny):
    model, tok = tiny
    with running_server(create_app(model, tok, model_name="tiny-llama", api_key=KEY)) as u:
        yield u


def collect(events: Iterator) -> list:
    out = list(events)
    assert isinstance(out[-1], Done) and not any(isinstance(e, Done) for e in out[:-1])
    return out


def test_models_and_greedy_stream_equal_engine(tiny, url):
    model, tok = tiny
    ids = chat_ids(tok, model, MESSAGES)
    want = reference(model, tok, ids, 8)
    with OpenAIClient(url, api_key=KEY) as client:  # base URL without /v1 is completed
        assert client.models() == ["tiny-llama"]
        events = collect(client.stream_chat(MESSAGES, {"temperature": 0, "max_tokens": 8,
                                                       "top_k": None}))
    assert isinstance(events[0], PromptDone) and events[0].seconds >= 0
    tokens = [e for e in events if isinstance(e, Token)]
    done = events[-1]
    assert "".join(t.text for t in tokens) == done.text == want.text
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert all(t.id == -1 and math.isnan(t.prob) for t in tokens)
    assert done.reason == ("length" if want.reason == "length" else "eos") and done.message == ""
    t = done.timings
    assert (t.prompt_tokens, t.gen_tokens) == (len(ids), want.timings.gen_tokens)
    assert t.server["predicted_n"] == want.timings.gen_tokens
    assert len(t.per_token_s) == len(tokens) and (t.ttft_s is None) == (not tokens)


def test_tuples_and_stop_string(tiny, url):
    model, tok = tiny
    ids = chat_ids(tok, model, MESSAGES)
    full = reference(model, tok, ids, 12).text
    stop = full.strip()[2:4]
    client = OpenAIClient(url + "/v1/", api_key=KEY, model="anything")
    done = collect(client.stream_chat([(m["role"], m["content"]) for m in MESSAGES],
                                      {"temperature": 0, "max_new_tokens": 12, "stop": [stop]}))[-1]
    assert done.text == full[:full.find(stop)] and done.reason == "eos"


def test_should_stop_cancels_and_server_moves_on(url):
    client = OpenAIClient(url, api_key=KEY)
    seen: list = []

    def stop() -> bool:
        return len(seen) >= 2

    events = []
    for ev in client.stream_chat(MESSAGES, {"temperature": 0, "max_tokens": 100}, stop):
        events.append(ev)
        if isinstance(ev, Token):
            seen.append(ev)
    done = events[-1]
    assert done.reason == "cancelled" and done.text == "".join(t.text for t in seen)
    again = collect(client.stream_chat(MESSAGES, {"temperature": 0, "max_tokens": 3}))[-1]
    assert again.reason in ("length", "eos")


def test_wrong_key_is_an_error_done(url):
    done = collect(OpenAIClient(url, api_key="nope", model="m").stream_chat(MESSAGES))[-1]
    assert done.reason == "error" and "401" in done.message and done.text == ""
    with pytest.raises(ConnectionError, match="401"):
        OpenAIClient(url).models()


def test_bad_request_is_an_error_done(url):
    done = collect(OpenAIClient(url, api_key=KEY, model="m").stream_chat(
        [{"role": "wizard", "content": "x"}]))[-1]
    assert done.reason == "error" and "400" in done.message and "role" in done.message


# -- failures on raw sockets -----------------------------------------------------------------------

@contextlib.contextmanager
def raw_server(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A one-connection TCP server: reads the request head and body, then `answer(conn)`."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    closed = threading.Event()

    def serve() -> None:
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            answer(conn)
            closed.wait(30)  # keep the socket open until the test is done with it

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{lsock.getsockname()[1]}"
    finally:
        closed.set()
        lsock.close()
        th.join(30)


def test_connection_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port now
    done = collect(OpenAIClient(f"http://127.0.0.1:{port}", model="m").stream_chat(MESSAGES))[-1]
    assert done.reason == "error" and "cannot connect" in done.message
    with pytest.raises(ConnectionError, match="cannot connect"):
        OpenAIClient(f"http://127.0.0.1:{port}").models()


def test_timeout():
    with raw_server(lambda conn: None) as u:  # reads the request, never answers
        done = collect(OpenAIClient(u, model="m", timeout=0.5).stream_chat(MESSAGES))[-1]
    assert done.reason == "error" and "did not answer in time" in done.message


def test_server_error_5xx():
    body = b'{"error": {"message": "the engine fell over", "type": "server_error"}}'

    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    with raw_server(answer) as u:
        done = collect(OpenAIClient(u, model="m").stream_chat(MESSAGES))[-1]
    assert done.reason == "error" and "500" in done.message and "fell over" in done.message


def test_stream_that_stops_halfway_keeps_what_arrived():
    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Connection: close\r\n\r\n")
        for piece in ("Hel", "lo"):
            conn.sendall(b'data: {"choices": [{"index": 0, "delta": {"content": "%s"}, '
                         b'"finish_reason": null}]}\n\n' % piece.encode())
        conn.shutdown(socket.SHUT_WR)  # the server goes away mid-reply

    with raw_server(answer) as u:
        events = collect(OpenAIClient(u, model="m").stream_chat(MESSAGES))
    assert isinstance(events[0], PromptDone)
    assert [e.text for e in events if isinstance(e, Token)] == ["Hel", "lo"]
    done = events[-1]
    assert done.reason == "error" and done.text == "Hello" and "ended early" in done.message
