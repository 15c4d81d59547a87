"""The SQLite conversation store: CRUD, search, token boundaries, streaming saves, export."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.conversations import (ConversationStore, Message, data_dir, export_json,
                               export_markdown)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLENS_DATA_DIR", str(tmp_path))
    s = ConversationStore()
    yield s
    s.close()


def test_data_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLENS_DATA_DIR", str(tmp_path / "d"))
    assert data_dir() == tmp_path / "d"
    assert (tmp_path / "d").is_dir()


def test_wal_mode(store):
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_create_list_rename_delete_search(store):
    a = store.create("Rotary embeddings", mode="chat", settings={"temperature": 0.2})
    b = store.create("100% sure_thing", mode="complete")
    c = store.create("Poem about GGUF")
    assert [x.id for x in store.list()] == [c.id, b.id, a.id]  # most recent first
    store.rename(a.id, "RoPE explained")
    assert store.list()[0].id == a.id  # touched -> first
    assert [x.title for x in store.list("rope")] == ["RoPE explained"]
    # LIKE wildcards in the query are literal characters
    assert [x.title for x in store.list("100%")] == ["100% sure_thing"]
    assert [x.id for x in store.list("_")] == [b.id]
    got = store.get(a.id)
    assert got.settings == {"temperature": 0.2} and got.mode == "chat"
    store.delete(b.id)
    assert not store.exists(b.id)
    with pytest.raises(KeyError):
        store.get(b.id)
    with pytest.raises(ValueError):
        store.update(a.id, nonsense=1)


def test_messages_tokens_truncate_cascade(store):
    conv = store.create("t")
    u = store.add_message(conv.id, Message("user", "héllo", token_ids=[5, 6],
                                           token_spans=[(0, 2), (2, 5)]))
    a = store.add_message(conv.id, Message("assistant", "", complete=False))
    assert (u.position, a.position) == (0, 1)
    a.content = "Hi there"
    a.token_ids = [10, 11]
    a.token_spans = [(0, 2), (2, 8)]
    a.prompt_ids = [1, 5, 6, 7]
    a.stats = {"gen_tok_s": 12.5}
    store.save_message(a)
    got = store.get(conv.id).messages
    assert [m.role for m in got] == ["user", "assistant"]
    assert got[0].token_spans == [(0, 2), (2, 5)] and got[0].content == "héllo"
    assert got[1].token_ids == [10, 11] and got[1].prompt_ids == [1, 5, 6, 7]
    assert got[1].complete is False and got[1].stats == {"gen_tok_s": 12.5}
    assert got[1].token_at(3) == 1 and got[1].token_at(100) is None
    store.truncate(conv.id, 1)
    assert [m.role for m in store.get(conv.id).messages] == ["user"]
    store.add_message(conv.id, Message("assistant", "again"))
    assert store.get(conv.id).messages[-1].position == 1
    store.delete(conv.id)
    n = sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    assert n == 0  # ON DELETE CASCADE


def test_export(store):
    conv = store.create("Export me", system_prompt="Be brief.", model="/m/x.gguf")
    store.add_message(conv.id, Message("user", "2+2?", token_ids=[1], token_spans=[(0, 4)]))
    store.add_message(conv.id, Message("assistant", "```\n4\n```", token_ids=[9, 8],
                                       token_spans=[(0, 4), (4, 9)]))
    full = store.get(conv.id)
    md = export_markdown(full)
    assert md.startswith("# Export me\n")
    assert "## System\n\nBe brief." in md and "## User\n\n2+2?" in md
    assert "## Assistant\n\n```\n4\n```" in md
    data = json.loads(export_json(full))
    assert data["title"] == "Export me" and data["system_prompt"] == "Be brief."
    assert data["messages"][1]["token_ids"] == [9, 8]
    assert data["messages"][1]["token_spans"] == [[0, 4], [4, 9]]


def test_killed_writer_keeps_committed_rows(tmp_path):
    """A process killed right after a save leaves the database readable with that save."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from app.conversations import ConversationStore, Message
        s = ConversationStore({str(tmp_path / 'c.sqlite3')!r})
        c = s.create("killed")
        m = s.add_message(c.id, Message("assistant", "", complete=False))
        for i in range(50):
            m.content += f"t{{i}} "
            m.token_ids.append(i)
            m.token_spans.append((len(m.content) - 3, len(m.content)))
            s.save_message(m)
        os._exit(9)   # no close, no checkpoint: like a kill
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == 9
    s = ConversationStore(tmp_path / "c.sqlite3")
    conv = s.list()[0]
    msg = s.get(conv.id).messages[0]
    assert msg.token_ids == list(range(50)) and msg.complete is False
    assert msg.content.split() == [f"t{i}" for i in range(50)]
