"""The project's own exception types: every expected failure surfaces as one of these.

The CLI turns any `LLMLensError` into one readable line and exit status 2; the GUI shows the
message in a dialog and keeps running.
"""


class LLMLensError(Exception):
    """Base class for every error the user can cause (bad file, bad settings, bad template)."""


class GGUFError(LLMLensError):
    """A file is not GGUF, is truncated or corrupt, or uses a feature we cannot read."""


class UnsupportedArchitectureError(LLMLensError):
    """`general.architecture` names a model family the engine does not implement."""


class UnsupportedTypeError(GGUFError):
    """A tensor uses a ggml type that is unknown or that we cannot dequantize."""


class TemplateError(LLMLensError):
    """A chat template failed to render (syntax error, raise_exception, sandbox violation)."""


class ContextOverflowError(LLMLensError):
    """The prompt, or prompt plus generation, does not fit in the context window."""


class ModelTooLargeError(LLMLensError):
    """Loading the model would need more memory than the machine has available."""


class DefaultModelError(LLMLensError):
    """The embedded default model could not be found or assembled."""


class LoadCancelled(LLMLensError):
    """`load_model` was asked to stop (its `should_stop` returned true) before it finished."""
