"""Streaming token ids -> text deltas, exact for multi-byte characters, merging tokens and stop strings.

Each push decodes a short window of ids twice, with and without the new ones, and emits the
difference (the "prefix/read offset" scheme vLLM uses). Both decodes start at the same token, so
tokenizer effects at a window's start (SentencePiece dropping a leading space) cancel out. A window
whose text ends in U+FFFD holds the bytes of a character that is not complete yet: nothing is
emitted until it is. The deltas therefore concatenate to exactly the full decode.

Stop strings: text that could still become a stop string is held back, so a stop string is never
partly emitted; when one appears, the text before it is emitted and the rest is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.tokenizer.tokenizer import Tokenizer

# Prompt tokens decoded ahead of the first output token, so that it decodes as it would in context.
_NUM_CONTEXT_TOKENS = 5
_INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] = (),
        stop: Sequence[str] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-_NUM_CONTEXT_TOKENS:])
        self._prefix_offset = 0  # window start
        self._read_offset = len(self._ids)  # ids before this are already emitted (or are prompt)
        self._stops = tuple(s for s in stop if s)
        self._held = ""  # decoded, not emitted: it may be the start of a stop string
        self._num_skip = 0  # characters still to drop from the output: a resumed request sent them
        self.stop_str: str | None = None  # the stop string that ended the text, if one did

    @property
    def finished_by_stop(self) -> bool:
        return self.stop_str is not None

    def push(self, token_ids: Sequence[int]) -> str:
        """The new text that ``token_ids`` complete; "" while a character or a stop string is pending."""
        if self.finished_by_stop:
            return ""
        self._ids.extend(token_ids)
        return self._emit(self._decode_new(final=False), final=False)

    def resume(self, token_ids: Sequence[int], sent: str) -> str:
        """Take in the tokens of a resumed request whose client already got ``sent``; returns what the
        client still lacks of them (usually ""), and drops ``sent``'s rest from later output.

        Pushed at once, tokens that end inside a character emit nothing yet, while the first worker
        had already sent the text before that character: without the count, it would come again.
        """
        text = self.push(token_ids)
        if not text.startswith(sent):
            self._num_skip = len(sent) - len(text) if sent.startswith(text) else 0
            return ""
        return text[len(sent):]

    def flush(self) -> str:
        """The text still held back, when the sequence ends for another reason than a stop string.

        Incomplete trailing bytes come out as U+FFFD, as the full decode has them.
        """
        if self.finished_by_stop:
            return ""
        return self._emit(self._decode_new(final=True), final=True)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)

    def _decode_new(self, final: bool) -> str:
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or (new_text.endswith(_INCOMPLETE) and not final):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]

    def _emit(self, text: str, final: bool) -> str:
        if self._num_skip:
            num = min(self._num_skip, len(text))
            text, self._num_skip = text[num:], self._num_skip - num
        pending = self._held + text
        hits = [(i, s) for s in self._stops if (i := pending.find(s)) >= 0]
        if hits:
            index, self.stop_str = min(hits)
            self._held = ""
            return pending[:index]
        keep = 0 if final else self._stop_prefix_len(pending)
        self._held = pending[len(pending) - keep :]
        return pending[: len(pending) - keep]

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
