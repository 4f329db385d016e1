"""Errors that reach users as one line: each says what went wrong and what to do next."""


class EdgeQwenError(Exception):
    """Base class: the CLI prints str(error) on one line and exits non-zero."""

    exit_code = 1


class ModelNotFoundError(EdgeQwenError):
    """No model file could be resolved from --model, the environment or models/."""


class ModelFileError(EdgeQwenError):
    """A model file exists but cannot be used (empty, truncated, not GGUF, wrong architecture)."""


class ModelFetchError(EdgeQwenError):
    """Downloading or assembling a model failed (network, hash mismatch)."""


class RoleError(EdgeQwenError):
    """A role YAML file is invalid; the message names the file and the field."""


class GrammarError(EdgeQwenError):
    """A grammar failed the Python-side check that runs before llama.cpp sees it."""


class InputError(EdgeQwenError):
    """A user input cannot be processed (e.g. empty text)."""

    exit_code = 2


class SchemaError(InputError):
    """A JSON schema uses a feature structured output does not support; the message names it and where."""


class ContextOverflowError(EdgeQwenError):
    """A prompt does not fit the context window; callers trim before this can happen."""


class ConvertError(EdgeQwenError):
    """A checkpoint cannot be converted or quantized (unsupported architecture, missing tokenizer, corrupt file)."""


class VerificationError(EdgeQwenError):
    """A quantized model disagrees with the unquantized one by more than the stated limit."""


class EngineError(EdgeQwenError):
    """llama.cpp could not do what was asked (e.g. no memory for the context)."""


class CacheBusyError(EngineError):
    """A prompt does not fit the KV cells that running chat slots leave free; it can run once they finish."""
