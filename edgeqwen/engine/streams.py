"""Several generations decoded together: one llama_decode per step for every active stream.

Each stream is a chat slot with its own sequence id (cells.FIRST_SLOT_SEQ on), sampler chain, token
budget and UTF-8 decoder. Its prompt starts from the role's kept prefix (shared cells, not evaluated
again); the rest is evaluated by the next steps, in the same batches as the other streams' tokens
(as much of it per step as the batch holds), so chats that arrive together have their prompts
evaluated together and a chat that joins running ones costs them no decode of its own. Every step()
puts the last sampled token of each generating stream into one batch with those prompt tokens, and
each stream whose row of logits came out samples its next token from it. A stream's cells (prompt and
whole budget) are reserved when it starts and freed the moment it ends or is closed, so work on the
working sequence between steps (a classification) can neither overrun the cache nor evict them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import CacheBusyError
from .cells import FIRST_SLOT_SEQ, MAX_SLOTS
from .picker import TokenPicker
from .reply import Generation, Reply, TokenLogprob
from .runtime import Entry, Runtime
from .sampling import SamplingParams


@dataclass
class Piece:
    """What one step gave a stream: text (maybe empty: an incomplete UTF-8 character) and, on its last
    step, why it stopped ("stop": end of turn, "length": its budget ran out)."""

    text: str
    finish_reason: str | None = None
    generation: Generation | None = None  # on its last step: what it produced
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens whose text this piece hands out


@dataclass
class _Stream:
    seq: int
    position: int  # where its next token goes
    picker: TokenPicker  # its own sampler chain (and grammar)
    reply: Reply
    prompt: list[int] = field(default_factory=list)  # prompt tokens not evaluated yet
    next_token: int = -1  # sampled and handed out, evaluated by the next step


class Streams:
    """Up to `slots` generations that share decode steps on one model's Runtime (Engine.streams makes
    them, with the model's way to start a reply: its budget rule, end-of-turn and control tokens)."""

    def __init__(self, runtime: Runtime, slots: int, *,
                 start_reply: Callable[[Sequence[int], SamplingParams], tuple[Reply, TokenPicker]]) -> None:
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be between 1 and {MAX_SLOTS}")
        self._runtime = runtime  # the context, batch and cells they share with the Engine
        self._start_reply = start_reply
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
        stream's handle, or None while no slot or too few free cells can take it (try again later).
        The prompt is evaluated by the next steps: the first piece comes from step()."""
        tokens = list(tokens)
        reply, picker = self._start_reply(tokens, sampling)
        budget = reply.budget
        shared = min(keep_prefix, len(tokens) - 1)
        own = len(tokens) - shared + budget
        if not self._free or self._runtime.cells.cells_in_slots() + own + shared > self._runtime.n_ctx:
            return None
        seq = self._free.pop()
        try:
            self._open(seq, tokens[:shared], own)
        except CacheBusyError:
            self._release(seq)
            return None
        except BaseException:
            self._release(seq)
            raise
        self._active[seq] = _Stream(seq, shared, picker, reply, tokens[shared:])
        return seq

    def step(self) -> dict[int, Piece]:
        """One decode for every active stream; returns the piece of each stream that sampled a token
        (one still evaluating a long prompt has none yet). A stream that ends in it is freed at once."""
        entries, sampling = self._batch()
        if not entries:
            return {}
        runtime = self._runtime
        try:
            runtime.fill_batch(entries)
            runtime.run_batch()
        except BaseException:
            self.close_all()
            raise
        pieces: dict[int, Piece] = {}
        for stream, row in sampling:
            try:
                stream.next_token, scores = stream.picker.pick(row)  # its own row of logits
            except BaseException:
                self.close_all()
                raise
            reply = stream.reply
            text = reply.take(stream.next_token, scores)
            reply.generation.resampled = stream.picker.resampled
            if reply.done:
                self.close(stream.seq)
                pieces[stream.seq] = Piece(text, reply.generation.finish_reason, reply.generation, reply.drain())
            else:
                pieces[stream.seq] = Piece(text, logprobs=reply.drain())
        return pieces

    def close(self, handle: int) -> Generation | None:
        """Stop a stream (its client went away) and free its slot; no-op for one already ended."""
        stream = self._active.pop(handle, None)
        if stream is None:
            return None
        self._release(handle)
        stream.picker.close()
        return stream.reply.generation

    def close_all(self) -> None:
        for handle in list(self._active):
            self.close(handle)

    # -- internals ------------------------------------------------------------------------------

    def _batch(self) -> tuple[list[Entry], list[tuple[_Stream, int]]]:
        """The step's batch entries: first the last token of every generating stream, then as much of
        the waiting prompts as fits, in the order their streams started; and which streams sample from
        which row."""
        entries: list[Entry] = []
        sampling: list[tuple[_Stream, int]] = []
        generating = [stream for stream in self._active.values() if not stream.prompt]
        prompting = [stream for stream in self._active.values() if stream.prompt]
        for stream in generating:
            sampling.append((stream, len(entries)))
            entries.append((stream.next_token, stream.position, stream.seq, True))
            stream.position += 1
        for stream in prompting:
            chunk = stream.prompt[: self._runtime.n_batch - len(entries)]
            del stream.prompt[: len(chunk)]
            entries += [(token, stream.position + j, stream.seq, False) for j, token in enumerate(chunk)]
            stream.position += len(chunk)
            if chunk and not stream.prompt:  # its prompt's last token: the row its first token comes from
                entries[-1] = (*entries[-1][:3], True)
                sampling.append((stream, len(entries) - 1))
        return entries, sampling

    def _open(self, seq: int, prefix: list[int], own: int) -> None:
        """The slot's sequence holding the kept `prefix` (evaluated once on the working sequence if not
        kept yet), and `own` cells reserved for the rest of its prompt and its reply."""
        cells = self._runtime.cells
        cells.truncate(0)  # the working sequence's last prompt: scratch, and cells the slot may need
        if prefix and tuple(prefix) not in cells.kept:
            self._runtime.hold(prefix)  # kept for the next stream too
        cells.open_slot(seq, prefix, own)
        cells.make_room(len(cells.working))

    def _release(self, seq: int) -> None:
        self._runtime.cells.close_slot(seq)
        self._free.append(seq)
        self._free.sort(reverse=True)
