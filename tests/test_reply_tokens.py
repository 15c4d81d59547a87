"""ConversationTokens without Qt: where each token of the latest context is shown in the chat."""

from __future__ import annotations

from app.conversations import Message
from app.reply_tokens import ConversationTokens, TokenRecord, locate


def pieces_to_prompt(pieces: list[str]) -> tuple[str, list[int], list[tuple[int, int]]]:
    """A fake tokenization: token k is pieces[k], id 100 + k."""
    text, spans = "", []
    for p in pieces:
        spans.append((len(text), len(text) + len(p)))
        text += p
    return text, [100 + k for k in range(len(pieces))], spans


GEMMA_PIECES = ["<bos>", "<start_of_turn>", "user", "\n", "You are terse.", "\n\n", "user", " says",
                "<end_of_turn>", "\n", "<start_of_turn>", "model", "\n"]


def records(texts: list[str], first_id: int = 500) -> list[TokenRecord]:
    return [TokenRecord(k, first_id + k, t, 0.5 + k / 100, ((first_id + k, t, 0.5),), 0.01)
            for k, t in enumerate(texts)]


def test_locate_prefers_the_last_occurrence_and_trimmed_content():
    text = "<start_of_turn>user\nuser<end_of_turn>\n<start_of_turn>model\n  hi  \n"
    at = text.index("  hi  ")
    assert locate(text, ["user", "  hi  "]) == [(20, 24), (at, at + 6)]
    # A template that trims: the content's own span is where the stripped text sits, widened.
    trimmed = "<t>user\nhello<e>"
    assert locate(trimmed, ["  hello\n"]) == [(trimmed.index("hello") - 2, trimmed.index("hello") + 6)]
    assert locate("abc", ["zzz", ""]) == [None, None]


def test_prompt_tokens_map_to_messages_not_role_markers():
    text, ids, spans = pieces_to_prompt(GEMMA_PIECES)
    msgs = [Message("user", "user says")]
    ct = ConversationTokens()
    ct.set_prompt(text, ids, spans, msgs, system_prompt="You are terse.")
    assert len(ct) == ct.n_prompt == len(GEMMA_PIECES)
    views = ct.views()
    assert [v.index for v in views] == list(range(len(GEMMA_PIECES)))
    roles = [v.role for v in views]
    # "user" role marker (token 2) is template; the message's own "user" (token 6) is the user's.
    assert roles[2] == "template" and roles[6] == "user" and roles[7] == "user"
    assert roles[4] == "system" and roles[0] == "template"
    assert views[6].message == 0 and views[2].message is None
    assert not any(v.generated for v in views)
    assert ct.message_tokens(0) == ([106, 107], [(0, 4), (4, 9)])
    for offset in range(len("user says")):
        j = ct.token_at(0, offset)
        m, s, e = ct.span_of(j)
        assert m == 0 and s <= offset < e
    assert ct.token_at(0, 9) is None and ct.token_at(3, 0) is None
    assert ct.span_of(2) is None


def test_streamed_reply_grows_the_message_and_the_sequence():
    text, ids, spans = pieces_to_prompt(GEMMA_PIECES)
    msgs = [Message("user", "user says")]
    ct = ConversationTokens()
    ct.set_prompt(text, ids, spans, msgs, system_prompt="You are terse.")
    reply = Message("assistant", complete=False)
    n0 = len(ct)
    new = ct.append(reply, records(["Hel", "lo", ""]))
    new += ct.append(reply, records(["é", " there", "STOP"], first_id=600))
    assert reply.content == "Helloé thereSTOP"
    assert reply.token_ids == [500, 501, 502, 600, 601, 602]
    assert [v.index for v in new] == list(range(n0, n0 + 6)) and ct.newest == n0 + 5
    assert all(v.generated and v.message == 1 and v.role == "assistant" for v in new)
    assert new[1].prob == 0.51 and new[1].top == ((501, "lo", 0.5),)
    # Every character of the reply maps to the token whose span covers it, and back.
    for offset, ch in enumerate(reply.content):
        j = ct.token_at(1, offset)
        m, s, e = ct.span_of(j)
        assert m == 1 and s <= offset < e and ch in ct.texts[j]
    assert ct.token_at(1, 3) == n0 + 1  # the empty token before "é" is never the answer
    # The stop string is cut: spans clipped to the final text, the last token now empty.
    ct.finish(reply, "Helloé there")
    assert reply.content == "Helloé there"
    assert reply.token_spans[-1] == (12, 12)
    assert ct.token_at(1, 11) == n0 + 4 and ct.token_at(1, 12) is None
    assert ct.span_of(n0 + 5) == (1, 12, 12)
    assert ct.texts[n0 + 5] == "" and ct.texts[n0 + 4] == " there"


def test_flushed_tail_belongs_to_the_last_token():
    ct = ConversationTokens()
    text, ids, spans = pieces_to_prompt(["<bos>", "hi"])
    ct.set_prompt(text, ids, spans, [Message("user", "hi")])
    reply = Message("assistant")
    ct.append(reply, records(["a", ""]))
    ct.finish(reply, "a€")
    assert reply.token_spans == [(0, 1), (1, 2)]
    assert ct.token_at(1, 1) == 3 and ct.view(3).text == "€"


def test_complete_mode_token_straddling_two_messages_belongs_to_both():
    # Complete mode joins the texts: "The cat" + " sat" tokenized as "The", " c", "at s", "at".
    text, ids, spans = pieces_to_prompt(["<bos>", "The", " c", "at s", "at"])
    msgs = [Message("user", "The cat"), Message("assistant", " sat")]
    ct = ConversationTokens()
    ct.set_prompt(text, ids, spans, msgs)
    assert ct.token_at(0, 5) == 3 and ct.token_at(1, 1) == 3
    assert ct.view(3).message == 0 and ct.span_of(3) == (0, 5, 7)
    assert ct.message_tokens(1) == ([103, 104], [(0, 2), (2, 4)])
    assert ct.view(4).role == "assistant"


def test_stored_reply_is_loaded_without_probabilities():
    text, ids, spans = pieces_to_prompt(["<bos>", "hello"])
    ct = ConversationTokens()
    ct.set_prompt(text, ids, spans, [Message("user", "hello")])
    reply = Message("assistant", "ab c", token_ids=[7, 8, 9], token_spans=[(0, 1), (1, 2), (2, 4)])
    ct.load_reply(reply)
    assert ct.ids == [100, 101, 7, 8, 9] and ct.n_prompt == 2
    assert [v.text for v in ct.views(2)] == ["a", "b", " c"]
    assert all(v.prob is None and v.generated for v in ct.views(2))
    assert ct.token_at(1, 3) == 4
    ct.clear()
    assert len(ct) == 0 and ct.newest is None and ct.token_at(1, 0) is None
