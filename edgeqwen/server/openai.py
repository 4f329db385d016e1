"""OpenAI chat completions mapped onto roles: `model` to a role, messages to a ChatSpec, results to response
bodies and chunks.

A request's `model` is the model file's id (the chat role) or any role's name; a classify role
answers with exactly one label (its labels' probabilities as logprobs), an extract role with JSON
that matches its schema. System and developer messages are merged into the role's system prompt;
max_tokens, temperature, top_p, seed and the penalties override its sampling; response_format,
stop, logprobs and logit_bias go to the conversation. A field that would change the answer and is not
done here is refused with a 400 naming it (schemas.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..errors import SchemaError
from ..json_schema import schema_grammar
from ..roles import Role
from .errors import ApiError, api_error, role_or_404
from .schemas import ChatCompletionRequest, RequestError, check_text, parse, unsupported
from .service import ChatSpec, Generated
from .sse import DONE, sse
from .worker import Job


def parse_request(data: Any) -> ChatCompletionRequest:
    """The request body, validated; refuses what this server cannot do, naming the field."""
    body = parse(ChatCompletionRequest, data)
    body.check_fields()
    schema = body.schema()
    if schema is not None:
        try:
            schema_grammar(schema)  # refused here, with a 400, before it can reach the model's thread
        except SchemaError as error:
            raise unsupported("response_format.json_schema.schema", str(error)) from None
    return body


def resolve_model(model: str, model_id: str, roles: Mapping[str, Role]) -> Role:
    """The role a request's `model` names: the model file's id means the chat role."""
    if model == model_id:
        return role_or_404(roles, "chat", "generate")
    if model in roles:
        return roles[model]
    names = ", ".join([model_id, *sorted(roles)])
    raise ApiError(404, f"the model {model!r} does not exist; available: {names} (GET /v1/models)",
                   code="model_not_found", param="model")


def chat_spec(body: ChatCompletionRequest, role: Role, max_text_chars: int,
              n_vocab: int) -> tuple[str, ChatSpec | None]:
    """The last user message, and for a generate role the ChatSpec: system prompt, sampling and history
    applied; `n_vocab`: the model's vocabulary size, which logit_bias's token ids must be below."""
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for index, message in enumerate(body.messages):
        where = f"messages.{index}"
        content = message.text(where)
        if message.role == "user" or len(content) > max_text_chars:
            # refuses empty user turns and any overlong text
            content = check_text(content, f"{where}.content", max_text_chars)
        if message.role in ("system", "developer"):
            system.append(content)
        else:
            turns.append({"role": message.role, "content": content})
    if not turns or turns[-1]["role"] != "user":
        raise RequestError("messages: the last message must be a user message", "messages")
    text = turns[-1]["content"]
    schema, stop = body.schema(), body.stop_texts()
    if role.kind != "generate":
        for field, value in (("response_format", schema), ("stop", stop), ("frequency_penalty", body.frequency_penalty),
                             ("presence_penalty", body.presence_penalty), ("logit_bias", body.logit_bias)):
            if value:
                why = f"not with the {role.kind} role {role.name!r} (its replies follow the role's own rules)"
                raise unsupported(field, why)
    if role.kind == "classify":
        return text, None
    updates: dict[str, Any] = {}
    if system:
        updates["system"] = "\n\n".join(system)
        updates["system_by_language"] = {}  # the request's system prompt replaces the role's, in every language
    sampling = {
        key: value
        for key, value in {
            "max_tokens": body.max_completion_tokens or body.max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "seed": body.seed,
            "frequency_penalty": body.frequency_penalty,
            "presence_penalty": body.presence_penalty,
        }.items()
        if value is not None
    }
    if sampling:
        updates["sampling"] = role.sampling.model_copy(update=sampling)
    role = role.model_copy(update=updates) if updates else role
    spec = ChatSpec(role=role, history=turns[:-1], text=text, schema=schema, stop=stop, logprobs=top_logprobs(body),
                    logit_bias=body.bias(n_vocab))
    return text, spec


def top_logprobs(body: ChatCompletionRequest) -> int | None:
    """None without logprobs; else how many alternatives each token comes with."""
    return (body.top_logprobs or 0) if body.logprobs else None


def new_meta(model: str) -> dict:
    """The fields every response and chunk of one completion shares."""
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}


def wants_usage(body: ChatCompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def usage(result: Generated) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def logprobs_field(entries: list[dict] | None) -> dict | None:
    return None if entries is None else {"content": entries, "refusal": None}


def completion(meta: dict, result: Generated) -> dict:
    """The non-streamed response body (`chat.completion`)."""
    message = {"role": "assistant", "content": result.reply, "refusal": None}
    logprobs = logprobs_field(result.logprobs)
    choice = {"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": logprobs}
    response = {
        **meta,
        "object": "chat.completion",
        "choices": [choice],
        "usage": usage(result),
    }
    if result.classification:
        response["classification"] = result.classification
    return response


async def chunks(job: Job, meta: dict, include_usage: bool) -> AsyncIterator[bytes]:
    """The streamed response: `chat.completion.chunk` events, usage if asked for, then `[DONE]`."""

    def chunk(delta: dict, finish: str | None = None, logprobs: list[dict] | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs_field(logprobs)}
        return sse({**meta, "object": "chat.completion.chunk", "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for piece in job.items():
            yield chunk({"content": piece.text}, logprobs=piece.logprobs)
        result: Generated = job.value
        yield chunk({}, result.finish_reason)
        if include_usage:
            yield sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage(result)})
    except Exception as error:  # noqa: BLE001 - reported in the stream: the 200 header is already sent
        yield sse(api_error(error).body())
    yield DONE
