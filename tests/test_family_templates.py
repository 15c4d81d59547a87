"""The real chat templates of issue #15's MoE families render exactly as transformers renders them.

Each template is rendered twice on the same inputs: by `engine.chat_template.render_chat` from a
GGUF-like metadata dict (the special-token strings come from the token ids, as they do for a
real file) and by transformers' `PreTrainedTokenizerFast.apply_chat_template` on a tokenizer with
the model's special tokens. The outputs must be equal, or both must fail. The inputs cover what
the templates branch on: with and without a system message, with and without the generation
prompt, tools and tool calls (arguments as a dict and as a JSON string, an assistant `content`
of None), a tool result, an assistant turn with reasoning, and each template's own arguments
(`enable_thinking`, `reasoning_effort`, `thinking`, `documents`, ...).

Templates (sources in tests/fixtures/templates/README.md): ERNIE 4.5 (-PT and -Thinking),
Granite 3.0 and 3.1 MoE, DeepSeek-V3 and V3.1 from tests/fixtures/templates/ (byte-exact,
checked by sha256); gpt-oss (harmony), GLM-4.6, GLM-4.7-Flash, LFM2-8B-A1B and LFM2.5-8B-A1B from
llama.cpp's source tree.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest

from engine.chat_template import render_chat
from engine.errors import TemplateError

FIXTURES = Path(__file__).parent / "fixtures" / "templates"

# Special tokens as each model's Hugging Face tokenizer declares them (tokenizer_config.json).
ERNIE_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
                "cls_token": "<|begin_of_sentence|>", "sep_token": "<|end_of_sentence|>",
                "mask_token": "<mask:1>"}
GPT_OSS_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|return|>",
                  "pad_token": "<|endoftext|>"}
GLM_TOKENS = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
GRANITE_TOKENS = {"bos_token": "<|end_of_text|>", "eos_token": "<|end_of_text|>",
                  "unk_token": "<|end_of_text|>", "pad_token": "<|end_of_text|>"}
LFM2_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}
DEEPSEEK_TOKENS = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
                   "pad_token": "<｜end▁of▁sentence｜>"}

DOCUMENTS = [{"title": "Paris", "text": "Paris is the capital of France."},
             {"title": "Lyon", "text": "Lyon is on the Rhône."}]

# name: (where the text is, sha256 of a fixture or None for llama.cpp's copy, special tokens,
#        template arguments tried besides none)
TEMPLATES = {
    "ernie-4.5-pt": ("ernie-4.5-pt.jinja",
                     "471fb571976770318fe6f27749e37940be8d29c0a7770558140f141f5906f2a2",
                     ERNIE_TOKENS, []),
    "ernie-4.5-thinking": ("ernie-4.5-21b-a3b-thinking.jinja",
                           "e141f14fb656c78182da82e2d900e404c021112a7f2df1953db26cab705c06f0",
                           ERNIE_TOKENS, [{"system_settings": "Answer briefly."}]),
    "granite-3.0": ("granite-3.0.jinja",
                    "09d68eeb5c0eaa551adea6cc088a05c7298966f395f203126e76b74f5a77a8ff",
                    GRANITE_TOKENS, []),
    "granite-3.1-moe": ("granite-3.1-moe.jinja",
                        "08962c2f15d56767854b46dfc4070b37f4c443551833bba65b417191735f3187",
                        GRANITE_TOKENS, [{"documents": DOCUMENTS}]),
    "deepseek-v3": ("deepseek-v3.jinja",
                    "3b8267e54b67df6500f231ffa969955cc9d26b3444a291ced4eb96ca7d3ca1ea",
                    DEEPSEEK_TOKENS, []),
    "deepseek-v3.1": ("deepseek-v3.1.jinja",
                      "45690185067ea25c073bff2d3e425a45ee2564d2bbf6cdf7d885e139d460b8e0",
                      DEEPSEEK_TOKENS, [{"thinking": True}]),
    "gpt-oss": ("llama.cpp:openai-gpt-oss-120b.jinja", None, GPT_OSS_TOKENS,
                [{"reasoning_effort": "high"}, {"model_identity": "You are Lens."}]),
    "glm-4.6": ("llama.cpp:GLM-4.6.jinja", None, GLM_TOKENS, [{"enable_thinking": False}]),
    "glm-4.7-flash": ("llama.cpp:GLM-4.7-Flash.jinja", None, GLM_TOKENS,
                      [{"enable_thinking": False}]),
    "lfm2-8b-a1b": ("llama.cpp:LFM2-8B-A1B.jinja", None, LFM2_TOKENS, []),
    "lfm2.5-8b-a1b": ("llama.cpp:LFM2.5-8B-A1B.jinja", None, LFM2_TOKENS, []),
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "the city"},
        "unit": {"type": "string", "enum": ["c", "f"]}}}}}]

SYSTEM = {"role": "system", "content": "You are terse."}
TURNS = [{"role": "user", "content": "Hi there! 👋"},
         {"role": "assistant", "content": "  Hello. How can I help?  "},
         {"role": "user", "content": "Write \"json\" {\"a\": 1} <b>&amp;</b>\nsecond line"}]


def _tool_turns(arguments, content):
    return [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": content, "tool_calls": [
                {"type": "function", "id": "call_1",
                 "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather",
             "content": "{\"temp\": 21}"},
            {"role": "assistant", "content": "21 °C."},
            {"role": "user", "content": "And in Lyon?"}]


# name: (messages, tools)
CONVERSATIONS = {
    "system+user+assistant+user": ([SYSTEM, *TURNS], None),
    "user+assistant+user": (TURNS, None),
    "one user turn": (TURNS[:1], None),
    "tools, dict arguments": ([SYSTEM, *_tool_turns({"city": "Paris"}, "")], TOOLS),
    "tools, string arguments": (_tool_turns("{\"city\": \"Paris\"}", "Let me look."), TOOLS),
    # transformers drops keys whose value is None before rendering.
    "tools, content None": (_tool_turns({"city": "Paris"}, None), TOOLS),
    "tools offered, not called": ([SYSTEM, *TURNS], TOOLS),
    # transformers copies a reasoning field to `reasoning_content` and `thinking`.
    "reasoning in history": ([SYSTEM, TURNS[0],
                              {"role": "assistant", "reasoning_content": "The user greets me.",
                               "content": "Hello."},
                              TURNS[2]], None),
    "reasoning in the last turn": ([TURNS[0], {"role": "assistant", "reasoning": "Think first.",
                                               "content": "Hello."}], None),
}


def _template(name: str, llama_cpp_dir: Path | None) -> str:
    where, sha, _, _ = TEMPLATES[name]
    if where.startswith("llama.cpp:"):
        return (llama_cpp_dir / "models" / "templates" / where.split(":", 1)[1]).read_text("utf-8")
    data = (FIXTURES / where).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha, f"{where} differs from the published template"
    return data.decode("utf-8")


def _hf_tokenizer(tokens: dict[str, str]):
    import transformers
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(dict.fromkeys(["<unk>", *tokens.values()]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)


_GGUF_ID_KEYS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                 "unk_token": "unknown_token_id", "pad_token": "padding_token_id",
                 "sep_token": "seperator_token_id", "mask_token": "mask_token_id"}


def _metadata(template: str, tokens: dict[str, str]) -> dict:
    """What llama.cpp's converter writes for these tokens: the vocabulary, the chat template and
    one id per special token it has a key for (gguf-py has none for the CLS token)."""
    vocab = list(dict.fromkeys(["<unk>", *tokens.values()]))
    md = {"general.architecture": "test", "tokenizer.ggml.tokens": vocab,
          "tokenizer.chat_template": template}
    for name, text in tokens.items():
        if name in _GGUF_ID_KEYS:
            md[f"tokenizer.ggml.{_GGUF_ID_KEYS[name]}"] = vocab.index(text)
    return md


def _cases(name: str):
    for conv in CONVERSATIONS:
        for kwargs in ({}, *TEMPLATES[name][3]):
            for gen in (True, False):
                yield conv, kwargs, gen


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_renders_as_transformers(name, request):
    where, _, tokens, _ = TEMPLATES[name]
    llama_cpp_dir = request.getfixturevalue("llama_cpp_source") if where.startswith("llama.cpp:") \
        else None
    template = _template(name, llama_cpp_dir)
    tok = _hf_tokenizer(tokens)
    md = _metadata(template, tokens)
    rendered = 0
    for conv, kwargs, gen in _cases(name):
        messages, tools = CONVERSATIONS[conv]
        kwargs = dict(kwargs)
        documents = kwargs.pop("documents", None)
        case = (name, conv, kwargs, documents is not None, gen)

        def hf():
            return tok.apply_chat_template(copy.deepcopy(messages), tools=tools,
                                           documents=documents, chat_template=template,
                                           tokenize=False, add_generation_prompt=gen, **kwargs)

        try:
            want = hf()
        except Exception:  # the template refuses this input: so must we
            with pytest.raises(TemplateError):
                render_chat(md, messages, gen, tools=tools, documents=documents, **kwargs)
            continue
        got = render_chat(md, messages, gen, tools=tools, documents=documents, **kwargs)
        if got != want and "strftime_now" in template:
            want = hf()  # today's date may have changed between the two renders
        assert got == want, case
        rendered += 1
    # Most inputs must render: a template that refused everything would prove nothing.
    assert rendered >= len(list(_cases(name))) // 2, (name, rendered)


def test_special_tokens_come_from_the_file():
    """transformers passes every special token of the tokenizer to the template; a GGUF file
    names BOS, EOS, UNK, PAD, SEP and MASK by id, and each reaches the template by its name."""
    template = "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{{ sep_token }}|" \
               "{{ mask_token }}|{{ cls_token is defined }}"
    tokens = ERNIE_TOKENS | {"pad_token": "<pad>"}
    md = _metadata(template, tokens)
    assert render_chat(md, TURNS) == "<s>|</s>|<unk>|<pad>|<|end_of_sentence|>|<mask:1>|False"
    without_cls = {k: v for k, v in tokens.items() if k != "cls_token"}
    assert render_chat(md, TURNS) == _hf_tokenizer(without_cls).apply_chat_template(
        TURNS, chat_template=template, tokenize=False)
    # Older files (and llama.cpp's loader) also know a CLS id.
    md["tokenizer.ggml.cls_token_id"] = md["tokenizer.ggml.tokens"].index("<|begin_of_sentence|>")
    assert render_chat(md, TURNS).endswith("|True")


def test_ernie_renders_the_published_format():
    """ERNIE-4.5-PT's format, spelled out: what the model was trained on, independent of both
    renderers."""
    md = _metadata(_template("ernie-4.5-pt", None), ERNIE_TOKENS)
    assert render_chat(md, [SYSTEM, *TURNS]) == (
        "<|begin_of_sentence|>You are terse.\nUser: Hi there! 👋\n"
        "Assistant:   Hello. How can I help?  <|end_of_sentence|>"
        "User: Write \"json\" {\"a\": 1} <b>&amp;</b>\nsecond line\nAssistant: ")
    thinking = _metadata(_template("ernie-4.5-thinking", None), ERNIE_TOKENS)
    out = render_chat(thinking, [SYSTEM, TURNS[0]])
    assert out.startswith("<|im_start|>system\n<system_setting>\nYou are terse.\n</system_setting>")
    assert out.endswith("<|im_start|>user\nHi there! 👋<|im_end|>\n\n"
                        "<|im_start|>assistant\n<think>\n")


def test_reasoning_reaches_templates_under_every_name():
    """A message's reasoning, under any of the names callers use, is what gpt-oss (`thinking`)
    and GLM/Qwen-style templates (`reasoning_content`) read, as transformers arranges it."""
    template = "{% for m in messages %}[{{ m.thinking }}|{{ m.reasoning_content }}|" \
               "{{ m.reasoning }}]{% endfor %}"
    messages = [{"role": "assistant", "content": "a", "reasoning": "r1"},
                {"role": "assistant", "content": "b", "thinking": "r2"},
                {"role": "assistant", "content": "c", "reasoning_content": "r3",
                 "thinking": "other"},
                {"role": "assistant", "content": "d", "reasoning_content": None}]
    tok = _hf_tokenizer({"eos_token": "</s>"})
    want = tok.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert render_chat(template, messages) == want == "[r1|r1|r1][r2|r2|][other|r3|][||]"
    assert messages[0] == {"role": "assistant", "content": "a", "reasoning": "r1"}  # untouched
