"""Chat templates: identical text to transformers' `apply_chat_template`, and a sandbox that
turns hostile templates into `TemplateError` instead of running them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine.chat_template import (CHATML_TEMPLATE, GEMMA_TEMPLATE, LLAMA3_TEMPLATE,
                                  chat_template_of, fallback_template, render_chat)
from engine.errors import TemplateError

BOS, EOS = "<s>", "</s>"

# Inline templates (as published in the models' tokenizer_config.json).
CHATML = CHATML_TEMPLATE
LLAMA3_ORIGINAL = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
    "<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA_ORIGINAL = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
    "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant"
    "/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = "
    "'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + "
    "'\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt"
    " %}{{'<start_of_turn>model\n'}}{% endif %}"
)

CHAT = [
    {"role": "user", "content": "Hi there! 👋"},
    {"role": "assistant", "content": "  Hello. How can I help?  "},
    {"role": "user", "content": "Write \"json\" {\"a\": 1} <b>&amp;</b>\nsecond line"},
]
SYSTEM_CHAT = [{"role": "system", "content": "You are terse."}] + CHAT


@pytest.fixture(scope="module")
def hf_tokenizer():
    import transformers
    from tokenizers import Tokenizer, models

    vocab = {"<unk>": 0, BOS: 1, EOS: 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS,
                                                eos_token=EOS, unk_token="<unk>")


def _hf(tok, template, messages, add_generation_prompt):
    return tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                   add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("name,template", [("chatml", CHATML), ("llama3", LLAMA3_ORIGINAL),
                                           ("gemma", GEMMA_ORIGINAL)])
@pytest.mark.parametrize("gen", [True, False])
def test_inline_templates_match_transformers(hf_tokenizer, name, template, gen):
    for messages in (CHAT, SYSTEM_CHAT):
        try:
            want = _hf(hf_tokenizer, template, messages, gen)
        except Exception as exc:  # Gemma refuses a system message: so must we
            with pytest.raises(TemplateError, match=str(exc).split("\n")[0][:30]):
                render_chat(template, messages, gen, bos_token=BOS, eos_token=EOS)
            continue
        assert render_chat(template, messages, gen, bos_token=BOS, eos_token=EOS) == want


def _template_files() -> list[Path]:
    from tests.fixtures.llama_cpp_src import llama_cpp_source_dir

    try:
        return sorted((llama_cpp_source_dir() / "models" / "templates").glob("*.jinja"))
    except Exception:
        return []


@pytest.mark.parametrize("path", _template_files() or [None],
                         ids=lambda p: p.stem if p else "none")
def test_real_templates_match_transformers(hf_tokenizer, path):
    """Every template llama.cpp keeps for its own tests (Qwen, Llama 3.x, Gemma, Phi, Mistral,
    DeepSeek, gpt-oss, ...), rendered by transformers and by us, must agree exactly, errors
    included."""
    if path is None:
        pytest.skip("llama.cpp source unavailable")
    template = path.read_text(encoding="utf-8")
    for messages in (CHAT, SYSTEM_CHAT):
        for gen in (True, False):
            try:
                want = _hf(hf_tokenizer, template, messages, gen)
            except Exception:
                with pytest.raises(TemplateError):
                    render_chat(template, messages, gen, bos_token=BOS, eos_token=EOS)
                continue
            got = render_chat(template, messages, gen, bos_token=BOS, eos_token=EOS)
            if "strftime_now" in template and got != want:
                # A template printing today's date may straddle midnight: render again.
                want = _hf(hf_tokenizer, template, messages, gen)
            assert got == want, (path.name, gen, messages is SYSTEM_CHAT)


def test_fallbacks_match_the_formats_they_imitate(hf_tokenizer):
    # Without a system message the Gemma fallback is Gemma's own template.
    assert render_chat(fallback_template("gemma3"), CHAT, bos_token="<bos>") == \
        _hf(hf_tokenizer, GEMMA_ORIGINAL.replace("bos_token", "'<bos>'"), CHAT, True)
    # With one, it goes in front of the first user turn (as Gemma 3's template does).
    out = render_chat(fallback_template("gemma"), SYSTEM_CHAT, bos_token="<bos>")
    assert out.startswith("<bos><start_of_turn>user\nYou are terse.\n\nHi there!")
    assert out.endswith("<start_of_turn>model\n")
    llama_vocab = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert fallback_template("llama", llama_vocab) == LLAMA3_TEMPLATE
    assert render_chat(LLAMA3_TEMPLATE, SYSTEM_CHAT, bos_token=BOS) == \
        _hf(hf_tokenizer, LLAMA3_ORIGINAL, SYSTEM_CHAT, True)
    assert fallback_template("qwen2") == CHATML_TEMPLATE
    assert fallback_template("llama", ["<s>", "</s>"]) == CHATML_TEMPLATE
    assert fallback_template("deepseek2") == CHATML_TEMPLATE
    assert GEMMA_TEMPLATE != CHATML_TEMPLATE


def test_metadata_source_and_special_tokens():
    md = {"general.architecture": "gemma3", "tokenizer.ggml.tokens": ["<pad>", "<eos>", "<bos>"],
          "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1}
    template, own = chat_template_of(md)
    assert not own and template == GEMMA_TEMPLATE
    assert render_chat(md, CHAT[:1]).startswith("<bos><start_of_turn>user\n")
    md["tokenizer.chat_template"] = "{{ bos_token }}|{{ eos_token }}|{{ messages|length }}"
    assert chat_template_of(md) == (md["tokenizer.chat_template"], True)
    assert render_chat(md, CHAT) == "<bos>|<eos>|3"
    assert render_chat(md, CHAT, bos_token="B", eos_token="E") == "B|E|3"


def test_helpers():
    assert render_chat("{{ messages[0]|tojson }}", [{"role": "user", "content": "é<&>"}]) == \
        '{"role": "user", "content": "é<&>"}'
    assert render_chat("{{ {'b': 1, 'a': [1, 2]}|tojson(indent=2, sort_keys=true) }}", []) == \
        '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}'
    assert render_chat("{{ strftime_now('%Y') }}", []) == time.strftime("%Y")
    assert render_chat("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}"
                       "{% endfor %}", []) == "012"
    assert render_chat("{% generation %}x{% endgeneration %}", []) == "x"
    assert render_chat("  {% if true %}\n  a\n  {% endif %}\n", []) == "  a\n"
    assert render_chat("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                       "{% endfor %}{{ ns.n }}", CHAT) == "3"
    with pytest.raises(TemplateError, match="no tools"):
        render_chat("{{ raise_exception('no tools') }}", CHAT)


ATTACKS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('echo pwned').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].system('echo pwned') }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__ }}",
    "{{ '{0.__class__.__base__}'.format(messages) }}",
    "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
    "{{ messages.append(1) }}",
    "{{ dict.__class__ }}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ request.application.__globals__ }}",  # undefined -> attribute of Undefined is unsafe
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_sandbox_escapes_are_template_errors(attack, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        out = render_chat(attack, CHAT)
    except TemplateError:
        return
    # Rendering without error is acceptable only if nothing leaked (undefined -> empty).
    assert out == "" and not list(tmp_path.iterdir())


BOMBS = [
    "{{ 'x' * 1000000000 }}",
    "{{ [1] * 1000000000 }}",
    "{% set x = 'ab' %}{% set x = x ~ x ~ x ~ x ~ x ~ x ~ x ~ x %}{% set x = x ~ x ~ x ~ x ~ x ~ x"
    " ~ x ~ x %}{% set x = x ~ x ~ x ~ x ~ x ~ x ~ x ~ x %}{% set x = x ~ x ~ x ~ x ~ x ~ x ~ x ~"
    " x %}{% set x = x ~ x ~ x ~ x ~ x ~ x ~ x ~ x %}{% set x = x ~ x ~ x ~ x ~ x ~ x ~ x ~ x %}"
    "{% set x = x ~ x ~ x ~ x ~ x ~ x ~ x ~ x %}{{ x }}",
    "{% set ns = namespace(x='ab') %}{% for i in range(64) %}{% set ns.x = ns.x + ns.x %}"
    "{% endfor %}{{ ns.x }}",
    "{{ 'x'|center(1000000000) }}",
    "{{ 'x'.ljust(1000000000) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:>{w}}'.format(1, w=999999999) }}",
    "{% set s = 'x' * 1000000 %}{{ s.replace('x', s) }}",
    "{{ 2 ** 100000000 }}",
    "{{ range(10000000)|list }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set l = messages * 1000 %}{% for a in l %}{% for b in l %}{% for c in l %}{% endfor %}"
    "{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for x in",
    "{{ undefined_function() }}",
]


@pytest.fixture
def short_deadline(monkeypatch):
    # The sandbox refuses most bombs outright; the rest must be stopped by the render deadline.
    # A short one keeps the suite quick; a bomb that escaped both would hang the run, not pass.
    import engine.chat_template as ct

    monkeypatch.setattr(ct, "TIME_LIMIT_S", 0.5)


@pytest.mark.parametrize("bomb", BOMBS)
def test_runaway_templates_are_bounded(bomb, short_deadline):
    with pytest.raises(TemplateError):
        render_chat(bomb, CHAT)


def test_usable_after_a_timeout(short_deadline):
    with pytest.raises(TemplateError, match="longer than 0.5 s"):
        render_chat("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                    "{% endfor %}", CHAT)
    time.sleep(0.1)  # a late timer must not hit later code
    assert render_chat(CHATML, CHAT[:1], False) == "<|im_start|>user\nHi there! 👋<|im_end|>\n"


# -- CLI -----------------------------------------------------------------------------------------
def _write_model(path: Path, template: str | None) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "qwen2")
    tokens = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b"]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3, 3, 1, 1])
    w.add_bos_token_id(1)
    w.add_eos_token_id(3)
    if template is not None:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _messages_file(tmp_path: Path, messages) -> Path:
    p = tmp_path / "messages.json"
    p.write_text(json.dumps(messages), encoding="utf-8")
    return p


def test_cli_render_template(tmp_path, capsys, hf_tokenizer):
    from app.cli import main

    template = LLAMA3_ORIGINAL.replace("bos_token", "bos_token + '|' + eos_token")
    model = _write_model(tmp_path / "m.gguf", template)
    msgs = _messages_file(tmp_path, SYSTEM_CHAT)
    assert main(["render-template", str(model), "--messages", str(msgs)]) == 0
    out = capsys.readouterr().out
    hf = hf_tokenizer.apply_chat_template(SYSTEM_CHAT, chat_template=template.replace(
        "bos_token + '|' + eos_token", "'<|endoftext|>|<|im_end|>'"), tokenize=False,
        add_generation_prompt=True)
    assert out == hf
    assert main(["render-template", str(model), "--messages", str(msgs),
                 "--no-generation-prompt"]) == 0
    assert capsys.readouterr().out == hf[: -len("<|start_header_id|>assistant<|end_header_id|>\n\n")]
    tpl = tmp_path / "t.jinja"
    tpl.write_text(CHATML, encoding="utf-8")
    assert main(["render-template", str(model), "--messages", str(msgs), "--template",
                 str(tpl)]) == 0
    assert capsys.readouterr().out == _hf(hf_tokenizer, CHATML, SYSTEM_CHAT, True)


def test_cli_render_template_fallback_and_errors(tmp_path, capsys, hf_tokenizer):
    from app.cli import main

    model = _write_model(tmp_path / "m.gguf", None)  # qwen2 without a template: ChatML
    msgs = _messages_file(tmp_path, {"messages": CHAT})
    assert main(["render-template", str(model), "--messages", str(msgs)]) == 0
    assert capsys.readouterr().out == _hf(hf_tokenizer, CHATML, CHAT, True)

    def one_error_line(argv) -> str:
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("llmlens: error:")
        assert captured.err.count("\n") == 1
        return captured.err

    assert "missing.gguf" in one_error_line(
        ["render-template", str(tmp_path / "missing.gguf"), "--messages", str(msgs)])
    assert "nope.json" in one_error_line(
        ["render-template", str(model), "--messages", str(tmp_path / "nope.json")])
    bad = tmp_path / "bad.json"
    bad.write_text("[{", encoding="utf-8")
    assert "invalid JSON" in one_error_line(["render-template", str(model), "--messages", str(bad)])
    evil = tmp_path / "evil.jinja"
    evil.write_text("{{ cycler.__init__.__globals__.os.system('echo pwned') }}", encoding="utf-8")
    assert "unsafe" in one_error_line(["render-template", str(model), "--messages", str(msgs),
                                       "--template", str(evil)])


@pytest.mark.slow
def test_cli_render_template_default_model(tmp_path, capsys, hf_tokenizer):
    from app.cli import main

    msgs = _messages_file(tmp_path, CHAT)
    assert main(["render-template", "--messages", str(msgs)]) == 0
    out = capsys.readouterr().out
    # The default Gemma 3 file has no template: Gemma's format, with its "<bos>" string.
    assert out == _hf(hf_tokenizer, GEMMA_ORIGINAL.replace("bos_token", "'<bos>'"), CHAT, True)
    assert main(["render-template", "default", "--messages", str(msgs)]) == 0
    assert capsys.readouterr().out == out
