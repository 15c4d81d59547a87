"""The app as a client of an OpenAI-compatible server (app/remote_host.py, ui/connect_dialog.py).

Against `llmlens serve` on a tiny gemma3 (a uvicorn thread on 127.0.0.1, as in test_serve.py;
its forward goes through test_serve's `Gate`, so a reply can be held mid-stream without
depending on speed): connect through the dialog, stream a reply equal to the engine's, stop,
regenerate, failures in the banner, and the attention / lens panels through
`/v1/lens/trace` equal to `engine.inspect` on the token ids the chat shows. Against llama.cpp's
own server (llama-cpp-python's `llama_cpp.server`) on the same GGUF: a streamed reply arrives
and the engine-only panels say they are not available. Also: the server's modules import no
Qt, the shared npz helper round-trips, and `llmlens bench --url`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.chat_controller import install_chat
from app.inspect_views import default_range, lens_view
from app.prompting import PromptRequest, build_prompt
from app.remote_host import UNAVAILABLE
from app.server.app import create_app
from engine.generate import Token, generate
from engine.inspect import from_arrays, inspect, to_arrays
from engine.models.base import load_model
from engine.sampling import SamplingParams
from engine.tokenizer import load_tokenizer
from tests.fixtures.tiny_models import tiny_model_factory  # noqa: F401 (fixture)
from tests.test_remote_backend import raw_server
from tests.test_serve import Gate, running_server

KEY = "s3cret"
WAIT_MS = 120_000
GREEDY = dict(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    """(model, tokenizer, gate, path): a tiny gemma3 (it has a chat template)."""
    path = tiny_model_factory("gemma3").gguf["f32"]
    model = load_model(path)
    gate = Gate(model.forward)
    model.forward = gate
    return model, load_tokenizer(model.gguf), gate, path


@pytest.fixture(scope="module")
def lens_url(tiny):
    model, tok, _, _ = tiny
    with running_server(create_app(model, tok, model_name="tiny-gemma3", api_key=KEY)) as url:
        yield url


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Settings and data in tmp_path, and no system keyring: a test never writes there."""
    from app import remote_host

    monkeypatch.setenv("LLMLENS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LLMLENS_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setattr(remote_host, "keyring_backend", lambda: None)
    return tmp_path


@pytest.fixture
def window(qtbot, dirs):
    """(window, chat controller): no local model is loaded."""
    from ui.main_window import MainWindow

    win = MainWindow()
    qtbot.addWidget(win)
    win.resize(1400, 900)
    ctl = install_chat(win, autoload=False)
    win.show()
    yield win, ctl
    ctl.shutdown()


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def banner(ctl) -> str:
    return "" if ctl.panel.error.isHidden() else ctl.panel.error.label.text()


def half_stream(conn: socket.socket) -> None:
    """A server that sends two pieces of a reply, then goes away."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Connection: close\r\n\r\n")
    for piece in ("Hel", "lo"):
        conn.sendall(b'data: {"choices": [{"index": 0, "delta": {"content": "%s"}, '
                     b'"finish_reason": null}]}\n\n' % piece.encode())
    conn.shutdown(socket.SHUT_WR)


def connect(qtbot, ctl, url, key=None, model=None) -> None:
    ctl.connect_remote(url, key, model)
    qtbot.waitUntil(lambda: ctl.load_id is None, timeout=WAIT_MS)
    assert ctl.model_info is not None and ctl.model_info.get("remote"), banner(ctl)


def send(qtbot, ctl, text: str, **settings):
    for name, value in settings.items():
        getattr(ctl.panel.settings, name).setValue(value)
    ctl.send(text)
    qtbot.waitUntil(lambda: not ctl.busy, timeout=WAIT_MS)
    return ctl.messages[-1]


def reference(model, tok, messages, n):
    """(prompt ids, generated ids, Done) of the engine's greedy reply."""
    request = PromptRequest(mode="chat", system_prompt="", messages=tuple(messages))
    _, ids = build_prompt(tok, model.gguf.metadata, request)
    events = list(generate(model, tok, ids, SamplingParams(temperature=0), max_new_tokens=n))
    return ids, [e.id for e in events if isinstance(e, Token)], events[-1]


# -- llmlens serve -----------------------------------------------------------------------------

def test_connect_dialog_chat_stop_regenerate(qtbot, window, tiny, lens_url, dirs):
    from app import remote_host

    win, ctl = window
    model, tok, gate, _ = tiny
    win.connect_action.trigger()  # File → Connect to Server…
    dialog = ctl.connect_dialog
    assert dialog.isVisible()
    dialog.url_box.setEditText(lens_url)
    dialog.key_edit.setText("wrong")
    dialog.fetch_button.click()
    qtbot.waitUntil(lambda: "401" in dialog.status.text(), timeout=WAIT_MS)
    assert dialog.models() == [] and win.isVisible()
    dialog.key_edit.setText(KEY)
    dialog.fetch_button.click()
    qtbot.waitUntil(lambda: dialog.models() == ["tiny-gemma3"], timeout=WAIT_MS)
    dialog.connect_button.click()
    qtbot.waitUntil(lambda: ctl.load_id is None and ctl.model_info is not None, timeout=WAIT_MS)
    info = ctl.model_info
    assert info["remote"] == lens_url + "/v1" and info["lens"] and info["name"] == "tiny-gemma3"
    assert ctl.engine is ctl.remote and "tiny-gemma3" in ctl.model_label.text()
    # the URL is remembered like a recent file; the key is not in the settings file
    assert remote_host.saved_servers() == [lens_url]
    assert remote_host.load_api_key(lens_url) == KEY
    ini = dirs / "config" / "llmlens.ini"
    assert lens_url in ini.read_text() and KEY not in ini.read_text()

    reply = send(qtbot, ctl, "hello there", **GREEDY)
    assert banner(ctl) == ""
    prompt_ids, gen_ids, want = reference(model, tok, [("user", "hello there")],
                                          GREEDY["max_new_tokens"])
    assert reply.content == want.text and reply.complete
    # the stream named its tokens: the chat holds the exact ids the server saw and generated
    assert reply.prompt_ids == prompt_ids and reply.token_ids == gen_ids
    assert ctl.tokens.ids == prompt_ids + gen_ids
    assert reply.stats["gen_tokens"] == want.timings.gen_tokens
    assert reply.stats["server_timings"]["predicted_n"] == want.timings.gen_tokens
    assert reply.stats["ttft_s"] is not None and reply.stats["per_token_s"]
    stored = ctl.store.get(ctl.conv.id).messages
    assert [m.content for m in stored] == ["hello there", want.text]

    # Stop: the server is held after two tokens; Stop ends the reply with what arrived.
    gate.close(permits=3)  # the prompt pass and two tokens
    try:
        ctl.regenerate()
        qtbot.waitUntil(lambda: ctl.stream is not None and len(ctl.stream.token_ids) >= 1,
                        timeout=WAIT_MS)
        ctl.stop()
        qtbot.waitUntil(lambda: not ctl.busy, timeout=WAIT_MS)
    finally:
        gate.open()
    stopped = ctl.messages[-1]
    assert stopped.stats["reason"] == "cancelled" and stopped.complete
    assert stopped.content and want.text.startswith(stopped.content)
    assert banner(ctl) == "" and win.isVisible()

    # Regenerate replaces it with the whole greedy reply again.
    ctl.regenerate()
    qtbot.waitUntil(lambda: not ctl.busy, timeout=WAIT_MS)
    assert [m.content for m in ctl.messages] == ["hello there", want.text]
    assert [m.content for m in ctl.store.get(ctl.conv.id).messages] == ["hello there", want.text]

    # Edit the question: the conversation from there is replaced, the reply is the engine's.
    ctl.begin_edit(0)
    ctl.send("the river")
    qtbot.waitUntil(lambda: not ctl.busy, timeout=WAIT_MS)
    _, _, edited = reference(model, tok, [("user", "the river")], GREEDY["max_new_tokens"])
    assert [m.content for m in ctl.store.get(ctl.conv.id).messages] == ["the river", edited.text]
    assert banner(ctl) == ""


def test_refused_401_and_server_errors_end_in_the_banner(qtbot, window, tiny, lens_url):
    win, ctl = window
    dead = f"http://127.0.0.1:{free_port()}"
    ctl.connect_remote(dead)
    qtbot.waitUntil(lambda: banner(ctl) != "", timeout=WAIT_MS)
    assert "cannot connect" in banner(ctl) and ctl.model_info is None
    assert ctl.engine is ctl.local and win.isVisible()

    ctl.connect_remote(lens_url, "wrong")
    qtbot.waitUntil(lambda: "401" in banner(ctl), timeout=WAIT_MS)
    assert ctl.model_info is None

    connect(qtbot, ctl, lens_url, KEY)
    # The key is revoked between connecting and sending: the reply ends in the banner and
    # the empty reply is dropped, the user's message kept.
    ctl.remote.api_key = "revoked"
    send(qtbot, ctl, "first", **GREEDY)
    assert "401" in banner(ctl)
    assert [m.role for m in ctl.messages] == ["user"]
    # The server goes away: refused, in the banner, and the window still answers.
    ctl.remote.url = dead
    ctl.regenerate()
    qtbot.waitUntil(lambda: not ctl.busy, timeout=WAIT_MS)
    assert "cannot connect" in banner(ctl) and [m.role for m in ctl.messages] == ["user"]
    # A stream that stops halfway: what arrived is kept, the banner says what happened.
    with raw_server(half_stream) as u:
        ctl.remote.url = u
        reply = send(qtbot, ctl, "more", **GREEDY)
    assert "ended early" in banner(ctl)
    assert reply.role == "assistant" and reply.content == "Hello"
    assert reply.stats["reason"] == "error" and "ended early" in reply.stats["error"]
    assert ctl.store.get(ctl.conv.id).messages[-1].content == "Hello"
    # Back to the real server: chatting works again.
    ctl.remote.configure(lens_url, KEY, "tiny-gemma3")
    reply = send(qtbot, ctl, "again", **GREEDY)
    assert reply.role == "assistant" and reply.complete and reply.content


def test_panels_through_the_lens_extension_equal_the_engine(qtbot, window, tiny, lens_url):
    win, ctl = window
    model, tok, _, _ = tiny
    ins = ctl.inspect
    ins.show_all()
    connect(qtbot, ctl, lens_url, KEY)
    reply = send(qtbot, ctl, "the river", **GREEDY)
    assert banner(ctl) == ""
    ids = reply.prompt_ids + reply.token_ids
    assert ctl.tokens.ids == ids and [t.id for t in ins.strip.tokens()] == ids

    q = ctl.tokens.n_prompt + 2  # a generated token
    ins.select_by_user(q)
    qtbot.waitUntil(lambda: ins.attention._view is not None and ins.attention._view.query == q
                    and ins.attention._view.matrix is not None, timeout=WAIT_MS)
    view = ins.attention._view
    a, b = default_range(q)
    ref = inspect(model, ids[:b], what=("attention",), rows=(a, b))
    assert len(view.rows) == model.config.n_layer
    for layer in range(model.config.n_layer):
        np.testing.assert_allclose(view.rows[layer], ref.attn[layer][:, q - a, :q + 1],
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(view.matrix, ref.attn[view.matrix_layer][:, :, a:b],
                               rtol=1e-5, atol=1e-6)
    assert view.window == list(model.layer_windows)

    qtbot.waitUntil(lambda: ins.lens.model.lens() is not None
                    and ins.lens.model.lens().position == q, timeout=WAIT_MS)
    got, want = ins.lens.model.lens(), lens_view(model, tok, ids, q, 10)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.probs, want.probs, rtol=1e-4, atol=1e-7)
    assert got.texts == want.texts and got.chosen_rank == want.chosen_rank
    # the server sends no probabilities: that panel says so
    assert "does not expose" in ins.probs.caption()
    assert banner(ctl) == ""


def test_lens_extension_fields_are_validated(lens_url):
    import httpx

    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=lens_url + "/v1", headers=headers, timeout=60) as http:
        meta = http.get("/models").json()["data"][0]["meta"]
        assert meta["lens"]["n_layer"] > 0 and meta["lens"]["has_chat_template"]
        for body, param in (({"ids": [1, 2], "lens_k": 0}, "lens_k"),
                            ({"ids": [1, 2], "lens_k": 10 ** 9}, "lens_k"),
                            ({"ids": [1, 2], "lens_pieces": -1}, "lens_pieces")):
            r = http.post("/lens/trace", json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param
        r = http.post("/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                 "return_tokens": "yes"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "return_tokens"


def test_trace_arrays_round_trip(tiny):
    model = tiny[0]
    ins = inspect(model, [1, 5, 9, 3], what=("attention", "lens"), rows=(1, 4), lens_k=3)
    arrays = to_arrays(ins)
    assert sorted(arrays) == sorted(["ids", "rows"] + [f"attn.{i}" for i in ins.attn]
                                    + [f"lens_ids.{i}" for i in ins.lens_ids]
                                    + [f"lens_logits.{i}" for i in ins.lens_logits])
    back = from_arrays(arrays)
    assert back.rows == (1, 4) and back.ids.tolist() == [1, 5, 9, 3]
    for layer in ins.attn:
        np.testing.assert_array_equal(back.attn[layer], ins.attn[layer])
        np.testing.assert_array_equal(back.lens_ids[layer], ins.lens_ids[layer])


def test_bench_url_measures_the_stream(lens_url, capsys):
    from app.commands.bench import run_url_bench

    s = run_url_bench(lens_url, KEY, n_prompt=8, n_gen=6, reps=2)
    assert s["model"] == "tiny-gemma3" and s["reps"] == 2 and len(s["gen_tok_s_all"]) == 2
    assert s["prompt_tokens"] > 0 and 2 <= s["gen_tokens"] <= 6
    assert s["ttft_s"] is not None and s["server_gen_tok_s"] is not None
    from app.cli import main

    assert main(["bench", "--url", lens_url, "--api-key", KEY, "-p", "4", "-n", "3",
                 "--reps", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "tiny-gemma3"


def test_serve_modules_import_no_qt(tiny):
    """`llmlens serve`'s modules, and the code its routes import when they run (prompt
    building, the trace), load no PySide6."""
    code = ("import sys\n"
            "import app.commands.serve, app.server.app\n"
            "from app.server.app import create_app\n"
            "from engine.models.base import load_model\n"
            "from engine.tokenizer import load_tokenizer\n"
            "model = load_model(sys.argv[1])\n"
            "server = create_app(model, load_tokenizer(model.gguf), model_name='m').state.server\n"
            "ids = server.chat_ids([('user', 'hi')])\n"
            "server.prompt_pieces(ids)\n"
            "import app.server.trace_npz, app.commands.trace, engine.inspect, app.remote_backend\n"
            "qt = sorted(m for m in sys.modules if m.split('.')[0] == 'PySide6')\n"
            "print(len(ids), qt)\n"
            "sys.exit(1 if qt or not ids else 0)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tiny[3])], capture_output=True,
                         text=True, timeout=300, cwd=str(Path(__file__).parents[1]))
    assert out.returncode == 0, out.stdout + out.stderr


# -- llama.cpp's server --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_cpp_url(tiny):
    from llama_cpp.server.app import create_app as llama_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    app = llama_app(server_settings=ServerSettings(host="127.0.0.1", port=0),
                    model_settings=[ModelSettings(model=str(tiny[3]), model_alias="tiny-llama-cpp",
                                                  n_ctx=256, n_threads=1, n_threads_batch=1,
                                                  verbose=False)])
    with running_server(app) as url:
        yield url


def test_llama_cpp_server_chat_and_panels_say_unavailable(qtbot, window, llama_cpp_url):
    win, ctl = window
    ins = ctl.inspect
    ins.show_all()
    connect(qtbot, ctl, llama_cpp_url)
    info = ctl.model_info
    assert info["name"] == "tiny-llama-cpp" and not info["lens"]
    streamed = []
    ctl.remote.worker.tokens.connect(lambda rid, batch: streamed.extend(batch))
    reply = send(qtbot, ctl, "hello", temperature=0.0, max_new_tokens=8)
    assert banner(ctl) == ""
    assert reply.complete and reply.stats["reason"] in ("eos", "length")
    assert streamed and reply.content  # a random tiny model rarely ends its turn at once
    assert "".join(t.text for t in streamed) == reply.content
    # the throughput panel got the reply's timings as measured on the stream
    last = ins.throughput.history()[-1]
    assert last.gen_tokens == reply.stats["gen_tokens"] and last.ttft_s == reply.stats["ttft_s"]
    assert last.per_token_s == tuple(reply.stats["per_token_s"])
    assert reply.stats.get("ttft_s") is None or reply.stats["ttft_s"] >= 0
    # no engine internals from this server: the panels say so, and none was asked for
    assert UNAVAILABLE in ins.attention.caption()
    assert UNAVAILABLE in ins.routing.empty_label.text()
    assert UNAVAILABLE in ins.lens.caption()
    if ctl.tokens.ids:
        ins.select_by_user(len(ctl.tokens.ids) - 1)
        assert "does not expose" in ins.probs.caption()
    assert ins.wanted() == () and ins.request_inspection() is None


# -- API keys ------------------------------------------------------------------------------------

class FakeKeyring:
    """The part of the `keyring` module app/remote_host.py uses, in a dict."""

    def __init__(self) -> None:
        self.store: dict[tuple[str, str], str] = {}

    def set_password(self, service, user, password):
        self.store[(service, user)] = password

    def get_password(self, service, user):
        return self.store.get((service, user))

    def delete_password(self, service, user):
        del self.store[(service, user)]


def test_api_key_goes_to_the_keyring_or_stays_in_memory(monkeypatch):
    from app import remote_host

    monkeypatch.setattr(remote_host, "_SESSION_KEYS", {})
    monkeypatch.setattr(remote_host, "keyring_backend", lambda: None)
    assert "in memory" in remote_host.key_storage_note()
    assert remote_host.save_api_key("http://a", "k1") is False
    assert remote_host.load_api_key("http://a") == "k1"

    fake = FakeKeyring()
    monkeypatch.setattr(remote_host, "_SESSION_KEYS", {})
    monkeypatch.setattr(remote_host, "keyring_backend", lambda: fake)
    assert "keyring" in remote_host.key_storage_note()
    assert remote_host.save_api_key("http://b", "k2") is True
    assert fake.store == {(remote_host.KEYRING_SERVICE, "http://b"): "k2"}
    monkeypatch.setattr(remote_host, "_SESSION_KEYS", {})  # a later session: from the keyring
    assert remote_host.load_api_key("http://b") == "k2"
    remote_host.save_api_key("http://b", None)  # cleared: gone from the keyring too
    assert fake.store == {} and remote_host.load_api_key("http://b") is None
