"""OpenAI request bodies (chat and legacy completions) with vLLM's sampling extensions.

Unknown fields are ignored, as OpenAI does; fields OpenAI has but busstop cannot honour (``n`` > 1,
tools, structured output, ``logit_bias``, ``echo``, ``suffix``) are refused with a 400 saying so.
Every field has explicit bounds (OpenAI's where it states them), every text must be valid Unicode
and every float finite, so what passes here cannot break a worker.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from shared.messages import ChatMessage, SamplingOptions

MAX_INT32 = 2**31 - 1
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1
MAX_NAME_CHARS = 256  # model and user names
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 1000


def _valid_unicode(value: str) -> str:
    """Refuse lone UTF-16 surrogates (JSON's ``"\ud800"``): they cannot be encoded as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"must be valid Unicode (a lone surrogate at position {exc.start})") from None
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(_valid_unicode)]
Stop = Annotated[str, Field(max_length=MAX_STOP_CHARS), AfterValidator(_valid_unicode)]
TokenId = Annotated[int, Field(ge=0, le=MAX_INT32)]

# OpenAI's "developer" role is the newer name of "system"; chat templates know only the latter.
_ROLE_ALIASES = {"developer": "system"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class TextPart(_Body):
    type: Literal["text"]
    text: Text


class ChatMessageIn(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = None
    name: Name | None = None

    def to_message(self) -> ChatMessage:
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        return ChatMessage(role=_ROLE_ALIASES.get(self.role, self.role), content=text)


class _SamplingBody(_Body):
    """Fields both endpoints share."""

    model: Name
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = 1
    stop: Stop | list[Stop] | None = Field(default=None)
    seed: int | None = Field(default=None, ge=MIN_SEED, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: Name | None = None
    logit_bias: dict[str, float] | None = None
    # vLLM's extensions.
    top_k: int | None = Field(default=None, ge=-1, le=MAX_INT32)  # -1 or 0: off
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    min_tokens: int = Field(default=0, ge=0, le=MAX_INT32)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=100.0)
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=MAX_STOP_SEQUENCES * 4)
    # Lower is sooner, as in vLLM; below 0 asks an internal key's request for the priority tier.
    priority: int = Field(default=0, ge=-MAX_INT32, le=MAX_INT32)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return value

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported; send separate requests for more choices")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def _sampling(self, max_tokens: int, logprobs: int | None) -> SamplingOptions:
        return SamplingOptions(
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            min_p=self.min_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
            stop=self._stop_list(),
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
        )


class ChatCompletionRequest(_SamplingBody):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tools are not supported")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs to be true")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _needs_tools(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("tools"):
            raise ValueError("tool_choice is only allowed when tools are specified")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and value.get("type", "text") != "text":
            raise ValueError("only the text response_format is supported")
        return value

    def chat_messages(self) -> list[ChatMessage]:
        return [m.to_message() for m in self.messages]

    def sampling(self, max_tokens_default: int) -> SamplingOptions:
        max_tokens = self.max_completion_tokens or self.max_tokens or max_tokens_default
        return self._sampling(max_tokens, (self.top_logprobs or 0) if self.logprobs else None)


class CompletionRequest(_SamplingBody):
    prompt: Text | list[Text] | list[TokenId] | list[list[TokenId]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: Text | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            if isinstance(value[0], (str, list)) and len(value) != 1:
                raise ValueError("only one prompt per request is supported")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix is not supported")
        return value

    def prompt_text(self) -> str | None:
        if isinstance(self.prompt, str):
            return self.prompt
        first = self.prompt[0]
        return first if isinstance(first, str) else None

    def prompt_token_ids(self) -> list[int] | None:
        if isinstance(self.prompt, str):
            return None
        first = self.prompt[0]
        if isinstance(first, list):
            return list(first)
        return None if isinstance(first, str) else [int(t) for t in self.prompt]  # type: ignore[arg-type]

    def sampling(self, max_tokens_default: int) -> SamplingOptions:
        return self._sampling(self.max_tokens or max_tokens_default, self.logprobs)
