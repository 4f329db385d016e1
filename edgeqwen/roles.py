"""Roles: YAML prompt files validated into Role objects, and the one place prompts are assembled.

A role is a job the model does: `classify` (pick one of a fixed label set), `generate` (free
text) or `extract` (a reply constrained to the role's JSON schema: fields pulled out of a message).
Each `*.yaml` file in a prompts directory is one role, named after the file. The roles that
ship with edgeqwen are loaded first; a user directory adds roles and overrides them by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import RoleError, SchemaError
from .grammar import label_problem
from .json_schema import schema_grammar
from .text import script_language

TEXT_PLACEHOLDER = "{text}"
RESERVED_NAMES = {"auto", "both", "rules", "llm"}  # --task values that are not roles
ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")

Message = dict[str, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Label(_Strict):
    name: str = Field(description="What the model emits; a single token where possible.")
    display: str | None = Field(None, description="What users see, e.g. 正面.")
    routes_to: str | None = Field(None, description="For a router role: the role this label sends input to.")

    @field_validator("name")
    @classmethod
    def _literal_safe(cls, name: str) -> str:
        problem = label_problem(name)
        if problem:
            raise ValueError(f"label {name!r} {problem}")
        return name

    @property
    def shown(self) -> str:
        return self.display or self.name


Language = Literal["en", "zh"]


class Example(_Strict):
    text: str
    label: str | None = None
    reply: str | None = None
    lang: Language | None = Field(None, description="A generate role: shown only for messages in this language.")


class Sampling(_Strict):
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.0, gt=0.0, le=2.0)
    max_tokens: int = Field(256, ge=1, le=8192)
    seed: int | None = None
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="OpenAI's: lowers a logit per earlier use.")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="OpenAI's: lowers a used token's logit once.")
    dry_multiplier: float = Field(0.0, ge=0.0, le=5.0, description="DRY: penalise copying the prompt; 0: off.")
    dry_allowed_length: int = Field(2, ge=1, le=64, description="DRY: runs up to this many tokens may repeat freely.")


class Training(_Strict):
    """How `edgeqwen heads` trains this role's head for a model: labelled texts beside the role file."""

    data: str = Field(description="JSON Lines beside the role file: text + label (or + route, for a router role).")
    reads: Literal["final", "block", "message"] = Field(
        "final", description="final: the last hidden state, blended with the label logits; block: the middle block "
        "chosen by cross-validation, so llama.cpp can stop there; message: the same, read at the end of the user's "
        "message, so the chat template's reply header is not evaluated either.",
    )


class Guidance(_Strict):
    """How a generate role's reply answers a text another role has classified (e.g. a negative review):
    for that role's label, text added to the system prompt and examples added to the prompt."""

    role: str = Field(description="The classify role whose label this entry is for, e.g. sentiment.")
    label: str = Field(description="One of that role's labels.")
    min_confidence: float = Field(0.0, ge=0.0, lt=1.0, description="Only when the label's confidence is at least this.")
    system: str = Field("", description="Added to the system prompt, for a message in any language.")
    system_by_language: dict[Language, str] = Field({}, description="Added instead, per language of the message.")
    template_by_language: dict[Language, str] = Field(
        {}, description="The user message in place of the role's template, per language of the message (examples' too)."
    )
    examples: list[Example] = Field([], description="Few-shot turns (text, reply, lang) after the role's own.")
    avoid_input: dict[Language, Annotated[float, Field(ge=0.0, le=10.0)]] = Field(
        {}, description="Per language of the message: taken off the logit of each of its tokens that the role's own "
        "prompt does not use, so the reply answers in its own words instead of restating the message.")

    @field_validator("template_by_language")
    @classmethod
    def _have_placeholders(cls, templates: dict[str, str]) -> dict[str, str]:
        return {language: _with_placeholder(template) for language, template in templates.items()}

    def system_for(self, language: str | None) -> str:
        return self.system_by_language.get(language, self.system)  # type: ignore[arg-type]

    def matches(self, role: str, label: str, confidence: float) -> bool:
        return role == self.role and label == self.label and confidence >= self.min_confidence


Known = tuple[str, str, float]  # a classification of the text by another role: (role, label, confidence)


class Role(_Strict):
    """One validated prompt file."""

    name: str
    source: str
    kind: Literal["classify", "generate", "extract"]
    description: str = ""
    system: str
    system_by_language: dict[Language, str] = Field(
        {}, description="A system prompt per language of the user's message (by script), used instead of `system`.")
    template: str = TEXT_PLACEHOLDER
    template_by_language: dict[Language, str] = Field(
        {}, description="A template per language of the user's message (by script), used instead of `template`.")
    examples: list[Example] = []
    labels: list[Label] = []
    sampling: Sampling = Sampling()
    calibration: Literal["none", "content_free"] = Field(
        "none", description="content_free: subtract the label bias the model shows for an empty input.")
    head: str | None = Field(
        None, description="A classification head file (.npz) beside the role file, from `edgeqwen eval --train-head`.")
    training: Training | None = Field(None, description="Texts `edgeqwen heads` trains the head on for a new model.")
    head_reads_prompt_of: str | None = Field(
        None, description="Another classify role whose prompt the head reads the text through (the role's own prompt "
        "serves only its label logits, when no head fits): a router that reads the sentiment role's prompt shares its "
        "kept prefix, and --task auto can route and label a review from one evaluation.",
    )
    output_schema: dict | None = Field(
        None, alias="schema", description="An extract role: the JSON schema every reply matches (a grammar made "
        "from it constrains the reply; json_schema.py says which keywords are supported).",
    )
    abstain_below: float = Field(
        0.0, ge=0.0, lt=1.0, description="A router role: below this confidence --task auto answers with both roles "
        "(label and reply), marked as abstained. 0: off.",
    )
    guidance: list[Guidance] = Field(
        [], description="A generate role: how a reply answers a text another role has classified, per role and label "
        "(the first entry that matches each classification applies).",
    )

    @field_validator("template")
    @classmethod
    def _has_placeholder(cls, template: str) -> str:
        return _with_placeholder(template)

    @field_validator("template_by_language")
    @classmethod
    def _have_placeholders(cls, templates: dict[str, str]) -> dict[str, str]:
        return {language: _with_placeholder(template) for language, template in templates.items()}

    @field_validator("head")
    @classmethod
    def _head_file(cls, head: str | None, info: ValidationInfo) -> str | None:
        if head is None:
            return head
        if Path(head).name != head or not head.endswith(".npz"):
            raise ValueError("must be the name of a .npz file in the role file's folder")
        path = Path(info.data.get("source", ".")).parent / head
        if not path.is_file():
            raise ValueError(f"head file not found: {path}")
        return head

    @model_validator(mode="after")
    def _kind_rules(self) -> "Role":
        names = [label.name for label in self.labels]
        if self.head is not None and self.kind != "classify":
            raise ValueError("head: only a classify role can have a head")
        if self.head_reads_prompt_of is not None and self.kind != "classify":
            raise ValueError("head_reads_prompt_of: only a classify role has a head")
        if self.abstain_below and not self.is_router:
            raise ValueError("abstain_below: only a router role (every label has routes_to) can abstain")
        if self.training is not None:
            if self.kind != "classify":
                raise ValueError("training: only a classify role can have a head to train")
            data = self.training.data
            if Path(data).name != data or not (Path(self.source).parent / data).is_file():
                raise ValueError(f"training.data: {data!r} must be a JSON Lines file in the role file's folder")
        if (self.kind == "extract") != (self.output_schema is not None):
            raise ValueError("schema: an extract role needs one (a JSON schema), and only an extract role has one")
        if self.output_schema is not None:
            try:
                schema_grammar(self.output_schema)
            except SchemaError as error:
                raise ValueError(f"schema: {error}") from None
        if self.kind == "classify":
            self._classify_rules(names)
        else:
            self._generate_rules(names)
        return self

    def _classify_rules(self, names: list[str]) -> None:
        if len(names) < 2:
            raise ValueError("labels: a classify role needs at least two labels")
        if len(set(names)) != len(names):
            raise ValueError("labels: duplicate label names")
        for index, example in enumerate(self.examples):
            if example.label not in names:
                raise ValueError(f"examples.{index}.label: must be one of {names}")
            if example.lang is not None:
                raise ValueError(f"examples.{index}.lang: only a generate role's examples may be shown per language")
        if self.guidance:
            raise ValueError("guidance: only a generate role's replies can be guided")

    def _generate_rules(self, names: list[str]) -> None:
        if names:
            raise ValueError(f"labels: a {self.kind} role has no labels")
        groups = [("examples", self.examples),
                  *((f"guidance.{i}.examples", g.examples) for i, g in enumerate(self.guidance))]
        for where, examples in groups:
            for index, example in enumerate(examples):
                if example.reply is None:
                    raise ValueError(f"{where}.{index}.reply: required for a {self.kind} role")

    _head_prompt: Role | None = PrivateAttr(None)  # the role named by head_reads_prompt_of, set by load_roles

    @property
    def head_prompt(self) -> Role:
        """The role whose prompt this role's head reads the text through: itself unless it names another."""
        return self._head_prompt or self

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def is_router(self) -> bool:
        """Every label names the role it routes to: its data's gold field is `route`, not `label`."""
        return bool(self.labels) and all(label.routes_to for label in self.labels)

    @property
    def head_file(self) -> str:
        """The file name of this role's head: its `head`, or <role name>.head.npz."""
        return self.head or f"{self.name}.head.npz"

    @property
    def training_path(self) -> Path | None:
        return Path(self.source).parent / self.training.data if self.training else None

    @property
    def by_language(self) -> bool:
        """Whether the fixed prompt depends on the language of the message (system prompt, template or examples)."""
        return bool(self.system_by_language or self.template_by_language) or any(e.lang for e in self.examples)

    def label(self, name: str) -> Label:
        return next(label for label in self.labels if label.name == name)

    def require_kind(self, kind: str) -> Role:
        """This role, or a RoleError naming its file when it is not a `kind` role (an extract role is a
        generate role whose replies follow its schema)."""
        if self.kind != kind and not (kind == "generate" and self.kind == "extract"):
            raise RoleError(f"{self.source}: role '{self.name}' is a {self.kind} role, not {kind}")
        return self

    def user_message(self, text: str) -> str:
        language = script_language(text) if self.template_by_language else None
        return self.template_by_language.get(language, self.template).replace(TEXT_PLACEHOLDER, text)

    def system_for(self, text: str | None = None) -> str:
        """The system prompt for a user message: the one for its language, if the role has one."""
        language = script_language(text) if text is not None and self.system_by_language else None
        return self.system_by_language.get(language, self.system)

    def with_system(self, system: str) -> Role:
        """This role with `system` as its only system prompt (a caller's own, e.g. an API request's)."""
        return self.model_copy(update={"system": system, "system_by_language": {}})

    def guidance_for(self, known: Iterable[Known]) -> list[Guidance]:
        """The guidance entries for what is known of the text: per classification, the first entry that matches."""
        chosen: list[Guidance] = []
        for role, label, confidence in known:
            entry = next((g for g in self.guidance if g.matches(role, label, confidence)), None)
            if entry is not None and entry not in chosen:
                chosen.append(entry)
        return chosen

    def guided(self, entries: Sequence[Guidance]) -> Role:
        """This role as it answers a text the `entries` are for: their system text added to each system
        prompt, their examples after the role's own, their templates (the first entry's for a language)."""
        if not entries:
            return self
        languages = set(self.system_by_language).union(*(g.system_by_language for g in entries))

        def extended(base: str, language: str | None) -> str:
            return "\n".join([base, *(text for g in entries if (text := g.system_for(language)))])

        return self.model_copy(update={
            "system": extended(self.system, None),
            "system_by_language": {
                lang: extended(self.system_by_language.get(lang, self.system), lang) for lang in sorted(languages)},
            "examples": [*self.examples, *(example for g in entries for example in g.examples)],
            "template_by_language": {**self.template_by_language, **{
                lang: template for g in reversed(entries) for lang, template in g.template_by_language.items()}},
        })

    def prefix_messages(self, text: str | None = None) -> list[Message]:
        """The fixed part of every prompt for `text`: system prompt and few-shot turns (cacheable)."""
        messages = [{"role": "system", "content": self.system_for(text)}]
        language = script_language(text) if text is not None else None
        for example in self.examples:
            if example.lang is not None and example.lang != language:
                continue
            answer = example.label if self.kind == "classify" else example.reply
            messages.append({"role": "user", "content": self.user_message(example.text)})
            messages.append({"role": "assistant", "content": answer or ""})
        return messages

    def messages(self, text: str, history: Sequence[Message] = ()) -> list[Message]:
        """The whole prompt for one input: fixed prefix, earlier turns, then the new user turn."""
        return [*self.prefix_messages(text), *history, {"role": "user", "content": self.user_message(text)}]


def pick_role(roles: Mapping[str, Role], name: str, kind: str | None = None) -> Role:
    """The role called `name` (of `kind`, if given), or a RoleError that lists the roles there are."""
    role = roles.get(name)
    if role is None:
        raise RoleError(f"no role named {name!r}; roles found: {', '.join(sorted(roles))}")
    return role.require_kind(kind) if kind else role


def default_prompts_dir() -> Path:
    """The roles that ship with edgeqwen: inside the installed package, or prompts/ in a checkout."""
    packaged = Path(str(resources.files("edgeqwen") / "prompts"))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "prompts"


def _field_path(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def load_role(path: Path) -> Role:
    """Read and validate one role file; every problem names the file and the field."""
    name = path.stem
    if not ROLE_NAME.match(name) or name in RESERVED_NAMES:
        raise RoleError(f"{path}: role name {name!r} must be lowercase letters, digits, - or _ "
                        f"and not one of {sorted(RESERVED_NAMES)}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise RoleError(f"{path}: cannot read: {error}") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        detail = " ".join(str(getattr(error, "problem", None) or error).split())  # one line, whatever the YAML error
        raise RoleError(f"{path}: invalid YAML{line}: {detail}") from None
    if not isinstance(data, dict):
        raise RoleError(f"{path}: must be a YAML mapping of fields (kind, system, template, ...)")
    for key in data:
        if not isinstance(key, str):  # `1: x` or a bare `?` would otherwise crash Role(**data)
            raise RoleError(f"{path}: field {key!r}: not a field name (fields are words such as kind, system, labels)")
    for reserved in ("name", "source"):
        if reserved in data:
            raise RoleError(f"{path}: field '{reserved}': not allowed (the role is named after its file)")
    try:
        return Role(name=name, source=str(path), **data)
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        raise RoleError(f"{path}: field '{_field_path(first)}': {message}") from None


def load_roles(user_dir: str | Path | None = None) -> dict[str, Role]:
    """The shipped roles, overridden and extended by the YAML files in `user_dir`."""
    roles = _load_dir(default_prompts_dir())
    if user_dir is not None:
        user_path = Path(user_dir)
        if not user_path.is_dir():
            raise RoleError(f"{user_path}: prompts directory not found")
        roles.update(_load_dir(user_path))
    _check_routes(roles.values())
    _check_guidance(roles)
    _link_head_prompts(roles)
    return roles


def _load_dir(directory: Path) -> dict[str, Role]:
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    roles: dict[str, Role] = {}
    for path in files:
        if path.stem in roles:
            raise RoleError(f"{path}: role name {path.stem!r} clashes with {roles[path.stem].source}")
        roles[path.stem] = load_role(path)
    return roles


def _check_routes(roles: Iterable[Role]) -> None:
    roles = list(roles)
    names = {role.name for role in roles}
    for role in roles:
        for index, label in enumerate(role.labels):
            if label.routes_to is not None and label.routes_to not in names:
                raise RoleError(f"{role.source}: field 'labels.{index}.routes_to': no role named {label.routes_to!r}")


def _with_placeholder(template: str) -> str:
    if TEXT_PLACEHOLDER not in template:
        raise ValueError(f"must contain the placeholder {TEXT_PLACEHOLDER}")
    return template


def _check_guidance(roles: Mapping[str, Role]) -> None:
    for role in roles.values():
        for index, entry in enumerate(role.guidance):
            other = roles.get(entry.role)
            if other is None or other.kind != "classify":
                raise RoleError(f"{role.source}: field 'guidance.{index}.role': no classify role named {entry.role!r}")
            if entry.label not in other.label_names:
                raise RoleError(f"{role.source}: field 'guidance.{index}.label': {entry.label!r} is not a label of "
                                f"role '{other.name}' ({', '.join(other.label_names)})")


def _link_head_prompts(roles: Mapping[str, Role]) -> None:
    for role in roles.values():
        name = role.head_reads_prompt_of
        if name is None:
            continue
        other = roles.get(name)
        if other is None or other.kind != "classify" or other.head_reads_prompt_of is not None or other is role:
            raise RoleError(f"{role.source}: field 'head_reads_prompt_of': {name!r} must be another classify role "
                            "that reads its own prompt")
        role._head_prompt = other
