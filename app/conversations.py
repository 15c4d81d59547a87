"""Conversations persisted in SQLite: titles, settings, messages and their token boundaries.

One file `conversations.sqlite3` in the user data dir (platformdirs), or in `$LLMLENS_DATA_DIR`
when set (tests). WAL mode with `synchronous=NORMAL`: every committed write survives the process
being killed, and a reader never blocks the writer. The chat controller writes a streaming reply
at most about once a second, so a crash mid-reply loses at most the last second of tokens.

Token boundaries are kept for the inspection panels: each message stores the ids of its tokens
and their `[start, end)` character spans in `content`; an assistant message also stores the
exact prompt ids the model saw before it (`prompt_ids`), so any token of the conversation can
be replayed through the model later. All access happens on the GUI thread (one connection).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

DB_NAME = "conversations.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id            INTEGER PRIMARY KEY,
    title         TEXT    NOT NULL,
    created       REAL    NOT NULL,
    updated       REAL    NOT NULL,
    system_prompt TEXT    NOT NULL DEFAULT '',
    mode          TEXT    NOT NULL DEFAULT 'chat',      -- 'chat' | 'complete'
    settings      TEXT    NOT NULL DEFAULT '{}',        -- JSON: sampling, context, threads
    model         TEXT    NOT NULL DEFAULT ''           -- path of the model last used
);
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    role            TEXT    NOT NULL,                   -- 'user' | 'assistant'
    content         TEXT    NOT NULL DEFAULT '',
    token_ids       TEXT    NOT NULL DEFAULT '[]',      -- JSON list[int]
    token_spans     TEXT    NOT NULL DEFAULT '[]',      -- JSON list[[start, end]] into content
    prompt_ids      TEXT    NOT NULL DEFAULT '[]',      -- JSON list[int]; assistant only
    complete        INTEGER NOT NULL DEFAULT 1,         -- 0 while streaming / if interrupted
    stats           TEXT    NOT NULL DEFAULT '{}',      -- JSON: timings, finish reason
    created         REAL    NOT NULL,
    UNIQUE (conversation_id, position)
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, position);
"""


def data_dir() -> Path:
    """Where the app keeps its data: `$LLMLENS_DATA_DIR`, else the platform's user data dir."""
    env = os.environ.get("LLMLENS_DATA_DIR")
    path = Path(env) if env else Path(platformdirs.user_data_dir("llmlens", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Message:
    role: str
    content: str = ""
    token_ids: list[int] = field(default_factory=list)
    token_spans: list[tuple[int, int]] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)
    complete: bool = True
    stats: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    position: int = 0

    def token_at(self, char_offset: int) -> int | None:
        """Index of the token whose span covers `char_offset` in `content`, or None."""
        for i, (start, end) in enumerate(self.token_spans):
            if start <= char_offset < end:
                return i
        return None


@dataclass
class Conversation:
    id: int
    title: str
    created: float
    updated: float
    system_prompt: str = ""
    mode: str = "chat"
    settings: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    messages: list[Message] = field(default_factory=list)


class ConversationStore:
    """CRUD over the conversations database; one instance per process, GUI thread only."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else data_dir() / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # autocommit; explicit txns
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    # -- conversations -------------------------------------------------------------------------

    def create(self, title: str = "New chat", system_prompt: str = "", mode: str = "chat",
               settings: dict[str, Any] | None = None, model: str = "") -> Conversation:
        now = time.time()
        cur = self._db.execute(
            "INSERT INTO conversations(title, created, updated, system_prompt, mode, settings, model)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (title, now, now, system_prompt, mode, json.dumps(settings or {}), model),
        )
        return Conversation(cur.lastrowid, title, now, now, system_prompt, mode,
                            dict(settings or {}), model)

    def list(self, search: str = "") -> list[Conversation]:
        """Conversations (without messages), most recently updated first; `search` filters titles."""
        sql = "SELECT * FROM conversations"
        args: tuple = ()
        if search.strip():
            sql += " WHERE title LIKE ? ESCAPE '\\'"
            pattern = search.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args = (f"%{pattern}%",)
        sql += " ORDER BY updated DESC, id DESC"
        return [self._conversation(row) for row in self._db.execute(sql, args)]

    def get(self, conversation_id: int) -> Conversation:
        row = self._db.execute("SELECT * FROM conversations WHERE id = ?",
                               (conversation_id,)).fetchone()
        if row is None:
            raise KeyError(conversation_id)
        conv = self._conversation(row)
        conv.messages = [self._message(r) for r in self._db.execute(
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY position", (conversation_id,))]
        return conv

    def exists(self, conversation_id: int) -> bool:
        return self._db.execute("SELECT 1 FROM conversations WHERE id = ?",
                                (conversation_id,)).fetchone() is not None

    def update(self, conversation_id: int, **fields: Any) -> None:
        """Set any of title, system_prompt, mode, settings (dict), model."""
        allowed = {"title", "system_prompt", "mode", "settings", "model"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown conversation fields: {sorted(unknown)}")
        if "settings" in fields:
            fields["settings"] = json.dumps(fields["settings"])
        fields["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._db.execute(f"UPDATE conversations SET {cols} WHERE id = ?",
                         (*fields.values(), conversation_id))

    def rename(self, conversation_id: int, title: str) -> None:
        self.update(conversation_id, title=title)

    def delete(self, conversation_id: int) -> None:
        self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # -- messages ------------------------------------------------------------------------------

    def add_message(self, conversation_id: int, message: Message) -> Message:
        """Append `message` at the end of the conversation; sets its id and position."""
        with self._txn():
            row = self._db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM messages "
                                   "WHERE conversation_id = ?", (conversation_id,)).fetchone()
            message.position = row[0]
            cur = self._db.execute(
                "INSERT INTO messages(conversation_id, position, role, content, token_ids,"
                " token_spans, prompt_ids, complete, stats, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, message.position, message.role, message.content,
                 json.dumps(message.token_ids), json.dumps(message.token_spans),
                 json.dumps(message.prompt_ids), int(message.complete),
                 json.dumps(message.stats), time.time()),
            )
            message.id = cur.lastrowid
            self._touch(conversation_id)
        return message

    def save_message(self, message: Message) -> None:
        """Write the current state of an existing message (used while a reply streams)."""
        if message.id is None:
            raise ValueError("message has no id; add it first")
        with self._txn():
            self._db.execute(
                "UPDATE messages SET content = ?, token_ids = ?, token_spans = ?, prompt_ids = ?,"
                " complete = ?, stats = ? WHERE id = ?",
                (message.content, json.dumps(message.token_ids), json.dumps(message.token_spans),
                 json.dumps(message.prompt_ids), int(message.complete),
                 json.dumps(message.stats), message.id),
            )
            conv = self._db.execute("SELECT conversation_id FROM messages WHERE id = ?",
                                    (message.id,)).fetchone()
            if conv is not None:
                self._touch(conv[0])

    def truncate(self, conversation_id: int, position: int) -> None:
        """Delete the messages at `position` and after (edit / regenerate)."""
        with self._txn():
            self._db.execute("DELETE FROM messages WHERE conversation_id = ? AND position >= ?",
                             (conversation_id, position))
            self._touch(conversation_id)

    # -- internals -----------------------------------------------------------------------------

    def _touch(self, conversation_id: int) -> None:
        self._db.execute("UPDATE conversations SET updated = ? WHERE id = ?",
                         (time.time(), conversation_id))

    def _txn(self):
        return _Transaction(self._db)

    @staticmethod
    def _conversation(row: sqlite3.Row) -> Conversation:
        return Conversation(row["id"], row["title"], row["created"], row["updated"],
                            row["system_prompt"], row["mode"], json.loads(row["settings"]),
                            row["model"])

    @staticmethod
    def _message(row: sqlite3.Row) -> Message:
        return Message(
            role=row["role"], content=row["content"], token_ids=json.loads(row["token_ids"]),
            token_spans=[tuple(s) for s in json.loads(row["token_spans"])],
            prompt_ids=json.loads(row["prompt_ids"]), complete=bool(row["complete"]),
            stats=json.loads(row["stats"]), id=row["id"], position=row["position"],
        )


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


# -- export ------------------------------------------------------------------------------------

def export_markdown(conv: Conversation) -> str:
    """The conversation as a readable Markdown document (roles as headings)."""
    lines = [f"# {conv.title}", ""]
    if conv.model:
        lines += [f"*Model:* `{Path(conv.model).name}` · *mode:* {conv.mode}", ""]
    if conv.system_prompt:
        lines += ["## System", "", conv.system_prompt, ""]
    for msg in conv.messages:
        heading = {"user": "User", "assistant": "Assistant"}.get(msg.role, msg.role.title())
        if not msg.complete:
            heading += " (interrupted)"
        lines += [f"## {heading}", "", msg.content, ""]
    return "\n".join(lines).rstrip() + "\n"


def export_json(conv: Conversation) -> str:
    """Everything stored about the conversation, token ids and spans included."""
    data = asdict(conv)
    for m in data["messages"]:
        m["token_spans"] = [list(s) for s in m["token_spans"]]
    return json.dumps(data, ensure_ascii=False, indent=2)
