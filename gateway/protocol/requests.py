"""OpenAI request bodies (chat and legacy completions) with vLLM's sampling extensions.

Unknown fields are ignored, as OpenAI does; fields OpenAI has but busstop cannot honour (``echo``,
``suffix``) are refused with a 400 saying so. Structured output and tools: protocol/structured.py.
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

from gateway.protocol.structured import (
    JsonSchema,
    ResponseFormat,
    ToolCallIn,
    ToolFields,
    response_format_grammar,
)
from gateway.structured.grammar import checked, choice_grammar, json_schema_grammar, regex_grammar
from shared.messages import ChatMessage, SamplingOptions, ToolCall

MAX_INT32 = 2**31 - 1
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1
MAX_NAME_CHARS = 256  # model and user names
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 1000
MAX_CHOICES = 16  # n
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_GUIDED_CHOICES = 1024


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
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Name | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant's calls
    tool_call_id: Name | None = None  # a tool's result: the call it answers

    def to_message(self) -> ChatMessage:
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        calls = None
        if self.tool_calls:
            calls = [ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                     for c in self.tool_calls]
        return ChatMessage(role=_ROLE_ALIASES.get(self.role, self.role), content=text, tool_calls=calls,
                           tool_call_id=self.tool_call_id)


class _SamplingBody(_Body):
    """Fields both endpoints share."""

    model: Name
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stop: Stop | list[Stop] | None = Field(default=None)
    seed: int | None = Field(default=None, ge=MIN_SEED, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: Name | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS_ENTRIES)
    response_format: ResponseFormat | None = None
    # vLLM's extensions.
    top_k: int | None = Field(default=None, ge=-1, le=MAX_INT32)  # -1 or 0: off
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    min_tokens: int = Field(default=0, ge=0, le=MAX_INT32)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=100.0)
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=MAX_STOP_SEQUENCES * 4)
    # Lower is sooner, as in vLLM; below 0 asks an internal key's request for the priority tier.
    priority: int = Field(default=0, ge=-MAX_INT32, le=MAX_INT32)
    guided_json: JsonSchema | None = None
    guided_regex: Annotated[str, Field(max_length=MAX_STOP_CHARS * 16)] | None = None
    guided_choice: list[Annotated[str, Field(min_length=1), AfterValidator(_valid_unicode)]] | None = Field(
        default=None, min_length=1, max_length=MAX_GUIDED_CHOICES)

    @field_validator("guided_json", "guided_regex", "guided_choice")
    @classmethod
    def _one_guide(cls, value: Any, info: ValidationInfo) -> Any:
        earlier = ("guided_json", "guided_regex", "guided_choice")
        response_format = info.data.get("response_format")
        if value is not None and (
            any(info.data.get(k) is not None for k in earlier if k != info.field_name)
            or response_format_grammar(response_format) is not None
        ):
            raise ValueError("use one of response_format, guided_json, guided_regex and guided_choice")
        if info.field_name == "guided_regex" and value is not None:
            checked(regex_grammar(value))
        if info.field_name == "guided_choice" and value is not None:
            checked(choice_grammar(value))
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not (key.isascii() and key.isdigit() and int(key) <= MAX_INT32):
                raise ValueError(f"keys must be token ids in [0, {MAX_INT32}], got {key[:20]!r}")
        return value

    def output_grammar(self) -> str | None:
        """The grammar of ``response_format`` or vLLM's ``guided_*``, if the request has one."""
        if self.guided_json is not None:
            return json_schema_grammar(self.guided_json)
        if self.guided_regex is not None:
            return regex_grammar(self.guided_regex)
        if self.guided_choice is not None:
            return choice_grammar(self.guided_choice)
        return response_format_grammar(self.response_format)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def _sampling(self, max_tokens: int, logprobs: int | None, grammar: str | None) -> SamplingOptions:
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
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            grammar=grammar,
        )


class ChatCompletionRequest(_SamplingBody, ToolFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs to be true")
        return value

    def chat_messages(self) -> list[ChatMessage]:
        return [m.to_message() for m in self.messages]

    @property
    def parses_tool_calls(self) -> bool:
        """Tool calls are read out of the answer: the model was offered tools."""
        return bool(self.tools) and self.effective_tool_choice != "none"

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """The tools the prompt offers (none with tool_choice "none", as vLLM does by default)."""
        return [t.as_dict() for t in self.tools or []] if self.parses_tool_calls else None

    def max_completion(self, max_tokens_default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or max_tokens_default

    def sampling(self, max_tokens_default: int) -> SamplingOptions:
        return self._sampling(
            self.max_completion(max_tokens_default),
            (self.top_logprobs or 0) if self.logprobs else None,
            self.tool_grammar() or self.output_grammar(),
        )


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

    def max_completion(self, max_tokens_default: int) -> int:
        return self.max_tokens or max_tokens_default

    def sampling(self, max_tokens_default: int) -> SamplingOptions:
        return self._sampling(self.max_completion(max_tokens_default), self.logprobs, self.output_grammar())
