"""Render a GGUF file's chat template (`tokenizer.chat_template`) the way Hugging Face does.

Templates are untrusted code from model files. They run in jinja2's `ImmutableSandboxedEnvironment`
with Hugging Face's settings (`trim_blocks`, `lstrip_blocks`, loop controls, `{% generation %}`)
and helpers (`raise_exception`, `strftime_now`, a `tojson` that does not HTML-escape, `dict`,
a `namespace` that refuses underscore names), and get their inputs as transformers 5 prepares
them (the file's BOS/EOS/UNK/PAD/SEP/CLS/MASK strings; message keys set to None dropped; a
message's reasoning also under `thinking` and `reasoning_content`), so the output is
byte-identical to `tokenizer.apply_chat_template(..., tokenize=False)` (checked on real templates
in tests/test_chat_template.py and tests/test_family_templates.py). On top of the sandbox,
rendering is bounded:

- string/list growth (`*`, `+`, `~`, `%`, `**`, `replace`, padding filters and methods) is
  checked against `MAX_CHARS` before the value is built;
- the output is capped at `MAX_CHARS`, and rendering gets `TIME_LIMIT_S` seconds of wall time
  (an exception is injected into the rendering thread when it runs out, which stops loops that
  print nothing);
- anything that goes wrong (syntax, `raise_exception`, sandbox violations such as
  `''.__class__`, recursion, limits) becomes `engine.errors.TemplateError` with one clear line.

Files without a template get a fallback chosen by `fallback_template(arch, tokens)`:

- `gemma`, `gemma2`, `gemma3`, `gemma3n` (and any arch starting with "gemma"): Gemma's
  `<start_of_turn>user ... <end_of_turn>` format, with the system message prepended to the first
  user turn, assistant turns as `model`;
- `llama` (or any arch) whose vocabulary has `<|start_header_id|>`: Llama 3's header format;
- `qwen*`, and everything else: ChatML (`<|im_start|>role\\n...<|im_end|>`).
"""

from __future__ import annotations

import ctypes
import json
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import TemplateError

MAX_CHARS = 2_000_000       # largest string/list a template may build, and largest output
TIME_LIMIT_S = 5.0          # wall-clock budget for one render
MAX_RANGE = 100_000         # as jinja2.sandbox.MAX_RANGE
_MAX_INT_ARG = 100_000      # largest int a filter/method argument may be (widths, counts)
_MAX_POW_BITS = 100_000

# -- fallback templates ----------------------------------------------------------------------------
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') "
    "+ message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def fallback_template(arch: str, tokens: Sequence[str] | None = None) -> str:
    """The template used for a file that has none (see the module docstring)."""
    arch = (arch or "").lower()
    if arch.startswith("gemma"):
        return GEMMA_TEMPLATE
    if tokens is not None and "<|start_header_id|>" in tokens:
        return LLAMA3_TEMPLATE
    return CHATML_TEMPLATE


# -- the sandbox -----------------------------------------------------------------------------------
class _Timeout(BaseException):
    """Injected into the rendering thread when its time is up (BaseException: templates cannot
    catch it, and neither can jinja2's own `except Exception` handlers)."""


class _TooBig(jinja2.exceptions.SecurityError):
    pass


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


def _check_size(value: Any) -> Any:
    if _size(value) > MAX_CHARS:
        raise _TooBig(f"template built a value of {_size(value):,} items (limit {MAX_CHARS:,})")
    return value


def _check_int_args(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > _MAX_INT_ARG:
            raise _TooBig(f"argument {a} to {name} is too large (limit {_MAX_INT_ARG:,})")


_FMT_NUMBER = re.compile(r"\d{6,}")


def _check_format_string(fmt: str) -> None:
    # "%0999999999d", "{:>999999999}": a width that would build a huge string.
    for spec in re.findall(r"%[^a-zA-Z%]*|\{[^{}]*\}", fmt):
        if _FMT_NUMBER.search(spec):
            raise _TooBig(f"format width in {spec!r} is too large")


def _check_replace(s: str, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        n = s.count(old) if old else len(s) + 1
        if isinstance(count, int) and count >= 0:
            n = min(n, count)
        if len(s) + n * (len(new) - len(old)) > MAX_CHARS:
            raise _TooBig(f"replace() would build more than {MAX_CHARS:,} characters")


def _safe_concat(parts: Sequence[Any]) -> str:
    total = 0
    strs = []
    for p in parts:
        s = p if isinstance(p, str) else str(p)
        total += len(s)
        if total > MAX_CHARS:
            raise _TooBig(f"template built a string over {MAX_CHARS:,} characters")
        strs.append(s)
    return "".join(strs)


class _BoundedCodeGenerator(CodeGenerator):
    """Routes `a ~ b` through a size check (the sandbox intercepts other operators, not `~`)."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            return super().visit_Concat(node, frame)
        self.write("environment.llmlens_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (HF's assistant-mask marker) renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """HF's TemplateNamespace: no underscore-prefixed names."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (jinja's signature trick)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check_name(name)
        _check_size(value)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed names on a namespace ({name!r})")


class _TemplateDict:
    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True,
                         extensions=[_GenerationTag, jinja2.ext.loopcontrols])
        self.llmlens_concat = _safe_concat
        for name, func in list(self.filters.items()):
            self.filters[name] = _bounded_filter(name, func)
        self.filters["tojson"] = _bounded_filter("tojson", _tojson)
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        self.globals["dict"] = _TemplateDict()
        self.globals["namespace"] = _Namespace
        self.globals["range"] = _bounded_range

    def wrap_str_format(self, value: Any) -> Any:
        # Checked when `"...".format` is looked up: the sandbox returns a wrapper, so `call`
        # never sees the format string itself.
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map"):
            _check_format_string(owner)
        return super().wrap_str_format(value)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    if len(seq) * max(n, 0) > MAX_CHARS:
                        raise _TooBig(f"template built a value over {MAX_CHARS:,} items")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                    and right * abs(left).bit_length() > _MAX_POW_BITS:
                raise _TooBig("exponent too large")
        elif operator == "+":
            if _size(left) + _size(right) > MAX_CHARS:
                raise _TooBig(f"template built a value over {MAX_CHARS:,} items")
        elif operator == "%" and isinstance(left, str):
            _check_format_string(left)
        return _check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        owner = getattr(__obj, "__self__", None)
        if getattr(__obj, "__name__", "") in ("format", "format_map"):
            _check_int_args("str.format", args, kwargs)  # "{:>{w}}".format(w=10**9)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            _check_int_args(f"str.{name}", args, kwargs)
            if name in ("format", "format_map"):
                _check_format_string(owner)
            elif name == "replace" and args:
                _check_replace(owner, *args[:3])
        return _check_size(super().call(__context, __obj, *args, **kwargs))


def _bounded_filter(name: str, func: Any) -> Any:
    skip = 2 if hasattr(func, "jinja_pass_arg") else 1

    def bounded(*args: Any, **kwargs: Any) -> Any:
        # Skip the filtered value (and the context/environment jinja passes before it).
        _check_int_args(f"filter {name}", args[skip:], kwargs)
        if name == "replace":
            strs = [a for a in args if isinstance(a, str)]
            if len(strs) >= 3:
                _check_replace(*strs[:3])
        if name == "format" and args and isinstance(args[0], str):
            _check_format_string(args[0])
        return _check_size(func(*args, **kwargs))

    # Keep jinja's pass_context / pass_environment / pass_eval_context markers.
    if hasattr(func, "jinja_pass_arg"):
        bounded.jinja_pass_arg = func.jinja_pass_arg  # type: ignore[attr-defined]
    bounded.__name__ = getattr(func, "__name__", name)
    return bounded


def _bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise _TooBig(f"range of {len(rng):,} items (limit {MAX_RANGE:,})")
    return rng


_ENV: _BoundedEnvironment | None = None
_ENV_LOCK = threading.Lock()
_COMPILED: dict[str, jinja2.Template] = {}


def _environment() -> _BoundedEnvironment:
    global _ENV
    with _ENV_LOCK:
        if _ENV is None:
            _ENV = _BoundedEnvironment()
        return _ENV


def _compile(source: str) -> jinja2.Template:
    tmpl = _COMPILED.get(source)
    if tmpl is None:
        tmpl = _environment().from_string(source)
        if len(_COMPILED) > 32:
            _COMPILED.clear()
        _COMPILED[source] = tmpl
    return tmpl


def _plain(value: Any) -> Any:
    """JSON-like data only: templates must not see objects with exploitable methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return f"<{type(value).__name__}>"


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The messages as transformers' `apply_chat_template` hands them to a template: keys whose
    value is None dropped (templates test `is defined`, and print None as "None"), and a
    reasoning text under any of its names also under `thinking` (gpt-oss reads that) and
    `reasoning_content` (GLM, Qwen, DeepSeek read that), in transformers' key order."""
    out = []
    for m in _plain([{k: v for k, v in m.items() if v is not None} for m in messages]):
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


# -- time limit ------------------------------------------------------------------------------------
def _run_with_deadline(fn: Any, seconds: float) -> Any:
    """Run fn() in this thread; if it takes longer than `seconds`, raise _Timeout inside it."""
    tid = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid),
                                                           ctypes.py_object(_Timeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    try:
        try:
            timer.start()
            return fn()
        finally:
            with lock:
                state["done"] = True
            timer.cancel()
            if state["fired"]:  # clear an exception that was set but not raised yet
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)
    except _Timeout:
        raise TemplateError(f"chat template took longer than {seconds:g} s to render") from None


# -- public API ------------------------------------------------------------------------------------
def _template_and_tokens(source: Any) -> tuple[str, dict[str, str]]:
    """(template text, special-token strings) for a metadata dict / GGUFFile / template string."""
    if isinstance(source, str):
        return source, {}
    md = source if isinstance(source, Mapping) else source.metadata
    tokens = md.get("tokenizer.ggml.tokens") or []
    special: dict[str, str] = {}
    # transformers passes every special token the tokenizer has (ERNIE's template reads
    # `sep_token`); a GGUF file names these by id ("seperator" is gguf's spelling).
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id"),
                      ("sep_token", "seperator_token_id"), ("cls_token", "cls_token_id"),
                      ("mask_token", "mask_token_id")):
        tid = md.get(f"tokenizer.ggml.{key}")
        if tid is not None and 0 <= int(tid) < len(tokens):
            special[name] = tokens[int(tid)]
    template = md.get("tokenizer.chat_template")
    if not template:
        template = fallback_template(str(md.get("general.architecture", "")), tokens)
    return template, special


def chat_template_of(metadata_or_gguf: Any) -> tuple[str, bool]:
    """(template text, True if it is the file's own / False if a fallback)."""
    md = metadata_or_gguf if isinstance(metadata_or_gguf, Mapping) else metadata_or_gguf.metadata
    own = md.get("tokenizer.chat_template")
    return (own, True) if own else (_template_and_tokens(md)[0], False)


def render_chat(metadata_or_template: Any, messages: Sequence[Mapping[str, Any]],
                add_generation_prompt: bool = True, bos_token: str | None = None,
                eos_token: str | None = None, *, tools: Sequence[Any] | None = None,
                documents: Sequence[Any] | None = None, **extra: Any) -> str:
    """The prompt text for `messages` ([{"role": ..., "content": ...}, ...]).

    `metadata_or_template` is a GGUF metadata dict, a `GGUFFile`, or a template string. BOS/EOS
    strings default to the file's tokens. Extra keyword arguments are passed to the template
    (e.g. `enable_thinking=False`). Raises `TemplateError`."""
    template, special = _template_and_tokens(metadata_or_template)
    if bos_token is not None:
        special["bos_token"] = bos_token
    if eos_token is not None:
        special["eos_token"] = eos_token
    special.setdefault("bos_token", "")
    special.setdefault("eos_token", "")
    for m in messages:
        if not isinstance(m, Mapping):
            raise TemplateError(f"chat messages must be objects with role/content, got {m!r}")
    context = _plain({**special, **extra})
    context.update(messages=_template_messages(messages), tools=_plain(tools),
                   documents=_plain(documents), add_generation_prompt=bool(add_generation_prompt))

    def render() -> str:
        out: list[str] = []
        total = 0
        for chunk in _compile(template).generate(**context):
            total += len(chunk)
            if total > MAX_CHARS:
                raise _TooBig(f"output over {MAX_CHARS:,} characters")
            out.append(chunk)
        return "".join(out)

    try:
        return _run_with_deadline(render, TIME_LIMIT_S)
    except TemplateError:
        raise
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise TemplateError(f"chat template syntax error (line {exc.lineno}): {exc.message}") from None
    except _TooBig as exc:
        raise TemplateError(f"chat template exceeded a limit: {exc}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"chat template tried something unsafe: {exc}") from None
    except jinja2.exceptions.TemplateError as exc:
        raise TemplateError(f"chat template error: {exc.message or exc}") from None
    except RecursionError:
        raise TemplateError("chat template recursed too deeply") from None
    except MemoryError:
        raise TemplateError("chat template ran out of memory") from None
    except Exception as exc:  # any other failure inside untrusted template code
        raise TemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from None
