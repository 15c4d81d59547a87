"""Token bookkeeping of the chat, without Qt: which conversation token sits where in which message.

The inspection panels number tokens by their position in the sequence the model saw for the
latest reply: that reply's prompt (the rendered template with every earlier message in it)
followed by the tokens it generated. `ConversationTokens` keeps that sequence while a reply
streams and after, and answers the two questions the window asks:

* which token is at character `offset` of chat message `m` (a click in the chat), and
* where token `i` is shown (message, character span), to highlight it.

It also grows the streamed reply's `Message` (content, token ids, spans) and produces the
`TokenView`s the panels draw. Messages are found in the prompt text by their content, last
first, so a template's role markers ("user", "model") never shadow a message that says the
same word; a token that straddles two messages (Complete mode joins texts) belongs to both.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from app.conversations import Message
from ui.inspect.model import TokenView


@dataclass(frozen=True)
class TokenRecord:
    """One generated token as the GUI sees it (a plain copy of `engine.generate.Token`)."""
    index: int
    id: int
    text: str
    prob: float
    top: tuple[tuple[int, str, float], ...]
    seconds: float


def locate(text: str, contents: Sequence[str], start: int = 0) -> list[tuple[int, int] | None]:
    """[start, end) of each of `contents` in `text`, in order, searched from the end backwards.

    Templates may trim a message: the stripped content is tried when the full one is absent.
    None for a content that is empty or not found.
    """
    out: list[tuple[int, int] | None] = [None] * len(contents)
    limit = len(text)
    for i in range(len(contents) - 1, -1, -1):
        content = contents[i]
        for candidate in (content, content.strip()):
            if not candidate:
                continue
            at = text.rfind(candidate, start, limit)
            if at >= 0:
                lead = content.find(candidate)  # chars of `content` the template dropped in front
                out[i] = (at - lead, at - lead + len(content))
                limit = at
                break
    return out


class ConversationTokens:
    """The latest reply's context, token by token: prompt ids then generated ids."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.ids: list[int] = []
        self.texts: list[str] = []
        self.roles: list[str] = []
        self.owner: list[int | None] = []  # chat message index shown for each token
        self.probs: list[float | None] = []
        self.tops: list[tuple[tuple[int, str, float], ...]] = []
        self.seconds: list[float | None] = []  # time to produce each generated token
        self.n_prompt = 0
        self.reply_index: int | None = None
        # message index -> sorted (start, end, token index) of the tokens shown in it
        self._placed: dict[int, list[tuple[int, int, int]]] = {}
        self._spans: dict[int, tuple[int, int, int]] = {}  # token -> (message, start, end)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def newest(self) -> int | None:
        return len(self.ids) - 1 if self.ids else None

    # -- building ------------------------------------------------------------------------------

    def set_prompt(self, text: str, ids: Sequence[int], spans: Sequence[tuple[int, int]],
                   messages: Sequence[Message], reply_index: int | None = None,
                   system_prompt: str = "") -> None:
        """Start over from a prompt: `text`/`spans` as `decode_spans` gives them for `ids`.

        `messages` are the chat messages in the prompt (chat indices 0..n-1); generated tokens
        will belong to message `reply_index` (default: the next one).
        """
        self.clear()
        self.reply_index = len(messages) if reply_index is None else reply_index
        contents = [m.content for m in messages]
        where = locate(text, ([system_prompt] if system_prompt else []) + contents)
        system = where.pop(0) if system_prompt else None
        regions = [(s, e, i, messages[i].role) for i, se in enumerate(where) if se is not None
                   for s, e in [se]]
        for j, (tid, (s, e)) in enumerate(zip(ids, spans)):
            owner, role = None, "template"
            for ms, me, i, r in regions:
                inside = (e > ms and s < me) if e > s else ms <= s < me
                if inside:
                    self._place(i, max(s, ms) - ms, min(e, me) - ms, j)
                    if owner is None:
                        owner, role = i, r
            if owner is None and system is not None and s < system[1] and max(e, s + 1) > system[0]:
                role = "system"
            self._append(int(tid), text[s:e], role, owner, None, (), None)
        self.n_prompt = len(self.ids)

    def message_tokens(self, message: int) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, spans in the message's content) of the tokens shown in chat message `message`."""
        placed = self._placed.get(message, [])
        return [self.ids[j] for _, _, j in placed], [(s, e) for s, e, _ in placed]

    def append(self, reply: Message, records: Sequence[TokenRecord]) -> list[TokenView]:
        """Add streamed tokens to `reply` (content, ids, spans) and to the sequence."""
        first = len(self.ids)
        for t in records:
            start = len(reply.content)
            reply.content += t.text
            reply.token_ids.append(int(t.id))
            reply.token_spans.append((start, len(reply.content)))
            self._place(self.reply_index, start, len(reply.content), len(self.ids))
            self._append(int(t.id), t.text, "assistant", self.reply_index, float(t.prob),
                         tuple(t.top), float(t.seconds))
        return self.views(first)

    def finish(self, reply: Message, text: str | None) -> None:
        """The reply ended with final text `text` (None: keep what streamed); each reply
        token's text becomes its span of the final text, as a stored reply reloads."""
        if isinstance(text, str) and text != reply.content:
            if reply.content.startswith(text):
                # A stop string was cut from the end: clip the token spans to the final text.
                reply.token_spans = [(min(s, len(text)), min(e, len(text)))
                                     for s, e in reply.token_spans]
            elif text.startswith(reply.content) and reply.token_spans:
                # The decoder's flushed tail (an incomplete UTF-8 sequence) belongs to the last token.
                reply.token_spans[-1] = (reply.token_spans[-1][0], len(text))
            reply.content = text
        self._replace_reply_spans(reply)

    def load_reply(self, reply: Message) -> None:
        """Append a stored reply's tokens (no probabilities: those exist only while streaming)."""
        for tid, (s, e) in zip(reply.token_ids, reply.token_spans):
            self._place(self.reply_index, s, e, len(self.ids))
            self._append(int(tid), reply.content[s:e], "assistant", self.reply_index, None, (),
                         None)

    def _replace_reply_spans(self, reply: Message) -> None:
        self._placed[self.reply_index] = []
        for k, (s, e) in enumerate(reply.token_spans):
            self._place(self.reply_index, s, e, self.n_prompt + k)
            self.texts[self.n_prompt + k] = reply.content[s:e]

    def _append(self, tid: int, text: str, role: str, owner: int | None, prob: float | None,
                top: tuple, seconds: float | None) -> None:
        self.ids.append(tid)
        self.texts.append(text)
        self.roles.append(role)
        self.owner.append(owner)
        self.probs.append(prob)
        self.tops.append(top)
        self.seconds.append(seconds)

    def _place(self, message: int, start: int, end: int, token: int) -> None:
        bisect.insort(self._placed.setdefault(message, []), (start, end, token))
        if token not in self._spans or self._spans[token][0] == message:
            self._spans[token] = (message, start, end)

    # -- questions -----------------------------------------------------------------------------

    def token_at(self, message: int, offset: int) -> int | None:
        """The token shown at character `offset` of chat message `message`, or None."""
        placed = self._placed.get(message, [])
        k = bisect.bisect_right(placed, (offset, float("inf"), 0)) - 1
        # The token starting at or before `offset`; an empty one (its character completes in a
        # later token) hands over to the next.
        while k >= 0:
            s, e, j = placed[k]
            if s <= offset < e:
                return j
            if e <= offset:
                break
            k -= 1
        return None

    def span_of(self, index: int) -> tuple[int, int, int] | None:
        """(message, start, end) where token `index` is shown; None for template tokens."""
        return self._spans.get(index)

    def view(self, index: int) -> TokenView:
        return TokenView(index=index, id=self.ids[index], text=self.texts[index],
                         role=self.roles[index], generated=index >= self.n_prompt,
                         message=self.owner[index], prob=self.probs[index], top=self.tops[index])

    def views(self, start: int = 0, end: int | None = None) -> list[TokenView]:
        end = len(self.ids) if end is None else end
        return [self.view(i) for i in range(start, end)]
