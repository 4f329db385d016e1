"""Request bodies of the HTTP API, validated with pydantic; every problem becomes one line naming the field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError
from ..text import clean_text

MAX_BATCH_TEXTS = 64  # texts in one /v1/sentiment or /v1/classify request
MAX_MESSAGES = 256  # messages in one chat request or history


class RequestError(ValueError):
    """A request body that does not validate: `param` names the field."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class _Body(BaseModel):
    # Clients of OpenAI-style APIs send fields we do not use (user, presence_penalty, ...): ignore them.
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self, where: str) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for index, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise RequestError(f"{where}.content.{index}: only text content parts are supported, not {part.type!r}", f"{where}.content")
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model: str
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=1, description="only one choice is generated")
    stop: str | list[str] | None = None


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
