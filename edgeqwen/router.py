"""Routing: decide whether an input wants sentiment analysis or a conversation.

Two strategies:
- `llm`: the `route` classify role, run by the same model through the same label path.
- `rules`: a keyword + length rule in the style of the seed project's router, kept for comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .classifier import Classification, Classifier
from .roles import Role
from .text import clean_text

STRATEGIES = ("llm", "rules")

# Words that ask for sentiment analysis or carry an opinion, per the seed's approach.
_SENTIMENT_KEYWORDS = (
    "情感", "情绪", "评价", "分析", "觉得", "喜欢",
    "讨厌", "太差", "很好", "不错", "失望", "满意",
    "sentiment", "review", "opinion", "feel", "love", "hate", "terrible", "great", "awful", "amazing",
)
_CHAT_MAX_CHARS = 10  # very short inputs are greetings or small talk


@dataclass(frozen=True)
class RouteDecision:
    task: str  # "sentiment" or "chat"
    strategy: str
    confidence: float | None = None
    abstained: bool = False  # the confidence is below the route role's abstain_below: run both roles

    def to_dict(self) -> dict:
        return asdict(self)


def rules_route(text: str) -> str:
    """Keyword + length rule: a question mark or a short text is chat, an opinion keyword is sentiment."""
    lowered = text.strip().lower()
    if lowered.endswith(("?", "？")) or len(lowered) < _CHAT_MAX_CHARS:
        return "chat"
    return "sentiment" if any(word in lowered for word in _SENTIMENT_KEYWORDS) else "chat"


class Router:
    """Routes text to a role name with the chosen strategy."""

    def __init__(self, strategy: str, classifier: Classifier | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown router strategy {strategy!r}; choose one of {STRATEGIES}")
        if strategy == "llm" and classifier is None:
            raise ValueError("the llm router needs the route classifier")
        self.strategy = strategy
        self._classifier = classifier

    @property
    def prompt(self) -> Role | None:
        """The role whose prompt the llm router reads texts through (the route role's own, or the one
        its head reads: Role.head_prompt); None for the rules."""
        return self._classifier.prompt if self._classifier is not None else None

    def route(self, text: str) -> RouteDecision:
        text = clean_text(text)
        if self.strategy == "rules":
            return RouteDecision(task=rules_route(text), strategy="rules")
        return self._decision(self._classifier.classify(text))

    def route_with(self, other: Classifier, text: str) -> tuple[RouteDecision, Classification | None]:
        """The route, and `other`'s label too when the route head reads texts as `other` does (the
        shipped route role reads the sentiment role's prompt at the sentiment head's block): one
        evaluation gives both. Otherwise only the route, and None."""
        if self.strategy == "llm" and self._classifier.shares_read_with(other):
            mine, theirs = self._classifier.classify_with(other, text)
            return self._decision(mine), theirs
        return self.route(text), None

    def _decision(self, result: Classification) -> RouteDecision:
        role = self._classifier.role
        target = role.label(result.label).routes_to or result.label
        return RouteDecision(task=target, strategy="llm", confidence=round(result.confidence, 4),
                             abstained=result.confidence < role.abstain_below)
