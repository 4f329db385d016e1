"""Several generations decoded together: one token of each active stream per llama_decode.

Each stream is a chat slot with its own sequence id (cells.FIRST_SLOT_SEQ on), sampler chain, token
budget and UTF-8 decoder. Its prompt starts from the role's kept prefix (shared cells, not evaluated
again); the rest is evaluated on its own sequence when it starts, and its first token sampled from
that. Every step() then puts the last sampled token of each active stream into one batch and samples
each stream's next token from its own row of logits. A stream's cells (prompt and whole budget) are
reserved when it starts and freed the moment it ends or is closed, so work on the working sequence
between steps (a classification) can neither overrun the cache nor evict them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import CacheBusyError
from .cells import FIRST_SLOT_SEQ, MAX_SLOTS
from .engine import Engine
from .reply import Generation, Reply
from .sampling import SamplingParams, build_sampler


@dataclass
class Piece:
    """What one step gave a stream: text (maybe empty: an incomplete UTF-8 character) and, on its last
    step, why it stopped ("stop": end of turn, "length": its budget ran out)."""

    text: str
    finish_reason: str | None = None
    generation: Generation | None = None  # on its last step: what it produced


@dataclass
class _Stream:
    seq: int
    position: int  # where its next token goes
    sampler: Any  # its own llama.cpp sampler chain
    reply: Reply
    next_token: int = -1  # sampled, not yet handed out or evaluated


class Streams:
    """Up to `slots` generations that share decode steps, on one Engine."""

    def __init__(self, engine: Engine, slots: int) -> None:
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be between 1 and {MAX_SLOTS}")
        self._engine = engine
        self._free = list(range(FIRST_SLOT_SEQ + slots - 1, FIRST_SLOT_SEQ - 1, -1))  # pop() gives the lowest
        self._active: dict[int, _Stream] = {}
        self.slots = slots

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def free(self) -> int:
        return len(self._free)

    def generation(self, handle: int) -> Generation:
        """Tokens and finish reason of an active stream (also handed back by close())."""
        return self._active[handle].reply.generation

    def start(self, tokens: Sequence[int], sampling: SamplingParams, keep_prefix: int = 0) -> int | None:
        """Start generating after `tokens` (their first `keep_prefix` are a kept role prefix); returns the
        stream's handle, or None while no slot or too few free cells can take it (try again later)."""
        engine, tokens = self._engine, list(tokens)
        budget = engine.reply_budget(tokens, sampling)
        shared = min(keep_prefix, len(tokens) - 1)
        own = len(tokens) - shared + budget
        cells = engine._cells
        if not self._free or cells.cells_in_slots() + own + shared > engine.n_ctx:
            return None
        seq = self._free.pop()
        try:
            self._open(seq, tokens, shared, own)
        except CacheBusyError:
            self._release(seq)
            return None
        except BaseException:
            self._release(seq)
            raise
        stream = _Stream(seq, len(tokens), build_sampler(engine._model, sampling, context=tokens, window=engine.n_ctx),
                         Reply(len(tokens), budget, engine._piece, engine.end_of_turn))
        stream.next_token = stream.sampler.sample(engine._ctx, -1)
        self._active[seq] = stream
        return seq

    def step(self) -> dict[int, Piece]:
        """One decode step for every active stream; a stream that ends in it is freed at once."""
        engine = self._engine
        pieces: dict[int, Piece] = {}
        entries, stepped = [], []
        for seq, stream in list(self._active.items()):
            reply = stream.reply
            text = reply.take(stream.next_token)
            if reply.done:
                self.close(seq)
                pieces[seq] = Piece(text, reply.generation.finish_reason, reply.generation)
                continue
            pieces[seq] = Piece(text)
            entries.append((stream.next_token, stream.position, seq, True))
            stream.position += 1
            stepped.append(stream)
        if entries:
            try:
                engine._fill_batch(entries)
                engine._run_batch()
            except BaseException:
                for stream in stepped:
                    self.close(stream.seq)
                raise
            for index, stream in enumerate(stepped):
                stream.next_token = stream.sampler.sample(engine._ctx, index)  # its own row of logits
        return pieces

    def close(self, handle: int) -> Generation | None:
        """Stop a stream (its client went away) and free its slot; no-op for one already ended."""
        stream = self._active.pop(handle, None)
        if stream is None:
            return None
        self._release(handle)
        return stream.reply.generation

    def close_all(self) -> None:
        for handle in list(self._active):
            self.close(handle)

    # -- internals ------------------------------------------------------------------------------

    def _open(self, seq: int, tokens: list[int], shared: int, own: int) -> None:
        """The slot's sequence holding `tokens` but the last one's successor, its logits ready."""
        engine, cells = self._engine, self._engine._cells
        prefix = tokens[:shared]
        cells.truncate(0)  # the working sequence's last prompt: scratch, and cells the slot may need
        if prefix and tuple(prefix) not in cells.kept:
            engine._hold(prefix)  # evaluated once on the working sequence, and kept for the next stream
        cells.open_slot(seq, prefix, own)
        cells.make_room(len(cells.working))
        suffix = [(token, shared + j, seq, shared + j == len(tokens) - 1) for j, token in enumerate(tokens[shared:])]
        for first in range(0, len(suffix), engine.n_batch):
            engine._fill_batch(suffix[first : first + engine.n_batch])
            engine._run_batch()

    def _release(self, seq: int) -> None:
        self._engine._cells.close_slot(seq)
        self._free.append(seq)
        self._free.sort(reverse=True)
