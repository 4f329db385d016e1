"""Request bodies of the HTTP API, validated with pydantic; every problem becomes one line naming the field."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError
from ..text import clean_text

MAX_BATCH_TEXTS = 64  # texts in one /v1/sentiment or /v1/classify request
MAX_MESSAGES = 256  # messages in one chat request or history


class RequestError(ValueError):
    """A request body that does not validate: `param` names the field; `status` 422 (a bad value) or 400
    (a field this server does not support)."""

    def __init__(
        self, message: str, param: str | None = None, code: str = "invalid_request", status: int = 422
    ) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status


def unsupported(field: str, why: str) -> RequestError:
    """A 400 naming a field this server will not silently ignore."""
    return RequestError(f"{field}: {why}", field, "unsupported_field", 400)


class _Body(BaseModel):
    # Clients of OpenAI-style APIs send fields we do not use (user, presence_penalty, ...): ignore them.
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Body):
    type: str
    text: str | None = None


# Message fields that a client replaying a reply sends back empty: accepted while empty, refused otherwise.
MESSAGE_EMPTY_FIELDS = ("tool_calls", "function_call", "audio", "refusal", "annotations")


class ChatMessage(_Body):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # a participant's name: changes nothing here, accepted

    def text(self, where: str) -> str:
        for field, value in (self.model_extra or {}).items():
            if field not in MESSAGE_EMPTY_FIELDS:
                raise unsupported(f"{where}.{field}", "not a message field this server knows")
            if value:
                raise unsupported(f"{where}.{field}", "tool calls, audio and the like are not supported")
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for index, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                why = f"only text content parts are supported, not {part.type!r}"
                raise unsupported(f"{where}.content.{index}", why)
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    schema_: Any = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None  # every reply matches the schema whether or not this is set


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    json_schema: JsonSchemaFormat | None = None


MAX_STOP = 4  # stop texts, as OpenAI
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300  # tokens one request may bias
LOGIT_BIAS_LIMIT = 100.0  # OpenAI's range: -100 to 100
TOKEN_ID = re.compile(r"-?[0-9]+")
# Fields of OpenAI's request that change nothing in the answer of this server: accepted and ignored.
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier", "prediction",
                  "parallel_tool_calls")
# Fields that would change the answer in a way this server cannot do, unless they hold their "off" value.
REFUSED_FIELDS = {
    "tools": "tools and function calling are not supported",
    "tool_choice": "tools and function calling are not supported",
    "functions": "tools and function calling are not supported",
    "function_call": "tools and function calling are not supported",
    "modalities": "only text output is supported",
    "audio": "audio output is not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "this model does not reason before it answers",
    "verbosity": "verbosity is not supported",
}
OFF_VALUES = {"tool_choice": ("none",), "function_call": ("none",), "modalities": (["text"],)}


class ChatCompletionRequest(_Body):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Any] | None = None

    def check_fields(self) -> None:
        """Refuse, naming the field, what would change the answer and is not done here; unknown fields too."""
        for field, value in (self.model_extra or {}).items():
            if field in IGNORED_FIELDS:
                continue
            if field not in REFUSED_FIELDS:
                raise unsupported(field, "not a chat-completions field this server knows (docs/server.md lists them)")
            if value not in (None, {}, []) and value not in OFF_VALUES.get(field, ()):
                raise unsupported(field, REFUSED_FIELDS[field])
        if self.n is not None and self.n > 1:
            raise unsupported("n", "only one choice is generated (n must be 1)")
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs: needs logprobs: true", "top_logprobs")

    def stop_texts(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise RequestError(f"stop: at most {MAX_STOP} stop sequences", "stop")
        if any(not text for text in stops):
            raise RequestError("stop: stop sequences must not be empty", "stop")
        return tuple(stops)

    def bias(self, n_vocab: int) -> dict[int, float]:
        """logit_bias as {token id: bias}, checked: ids of this model's vocabulary, biases from -100 to 100.

        The numbers go to llama.cpp as they are, -100 too (as llama.cpp's own server does, which maps
        only `false` to -inf; OpenAI documents the bias as added to the logits): -100 is a ban in
        practice, the gap it makes is far wider than a logit's spread (docs/server.md)."""
        entries = self.logit_bias or {}
        if len(entries) > MAX_LOGIT_BIAS:
            raise RequestError(f"logit_bias: at most {MAX_LOGIT_BIAS} tokens, not {len(entries)}", "logit_bias")
        bias = {}
        for key, value in entries.items():
            if not TOKEN_ID.fullmatch(key):
                problem = f"{key[:40]!r} is not a token id (an integer, as a string)"
            elif len(key) > 12 or not 0 <= int(key) < n_vocab:  # no vocabulary has a 12-digit id
                problem = f"token id {key[:40]} is not in this model's vocabulary (0 to {n_vocab - 1})"
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or abs(value) > LOGIT_BIAS_LIMIT:
                problem = f"the bias of token {key} must be a number from -100 to 100, not {value!r:.40}"
            else:
                bias[int(key)] = float(value)
                continue
            raise RequestError(f"logit_bias: {problem}", "logit_bias")
        return bias

    def schema(self) -> Any | None:
        """The JSON schema the reply must match: None for free text."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "object"}
        if fmt.type != "json_schema":
            why = f"{fmt.type!r} is not supported (text, json_object or json_schema)"
            raise unsupported("response_format.type", why)
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise RequestError(
                "response_format.json_schema.schema: required with type json_schema", "response_format.json_schema"
            )
        return fmt.json_schema.schema_


class HistoryMessage(_Body):
    role: Literal["user", "assistant"]
    content: str


class RunRequest(_Body):
    text: str
    task: Literal["auto", "sentiment", "chat", "both"] = "auto"
    history: list[HistoryMessage] = Field(default_factory=list, max_length=MAX_MESSAGES)
    stream: bool = False


class ClassifyRequest(_Body):
    text: str | None = None
    texts: list[str] | None = Field(None, min_length=1, max_length=MAX_BATCH_TEXTS)


def parse(model: type[BaseModel], data: Any) -> Any:
    """Validate `data` into `model`, or raise RequestError with the first problems, one line."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors()[:3]:
            where = ".".join(str(part) for part in item["loc"]) or "body"
            problems.append(f"{where}: {item['msg']}")
        first = error.errors()[0]["loc"] if error.errors() else ()
        raise RequestError("; ".join(problems), ".".join(str(p) for p in first) or None) from None


def check_text(text: str, where: str, max_chars: int) -> str:
    """Refuse text that is empty or longer than the server's limit (before it reaches the queue)."""
    try:
        clean_text(text)  # the model's own rule for empty input; the text itself goes on unchanged
    except InputError:
        raise RequestError(f"{where}: empty text: give some text to analyse", where, "empty_text") from None
    if len(text) > max_chars:
        raise RequestError(
            f"{where}: text is {len(text)} characters; this server accepts at most {max_chars} (--max-text-chars)",
            where,
            "text_too_long",
        )
    return text
