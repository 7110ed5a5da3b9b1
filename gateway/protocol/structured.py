"""Request fields of structured output and tool calling: OpenAI's shapes, checked when parsed.

Each schema is compiled (without a vocabulary) while the body is validated, so a bad schema is a 400
naming its field before anything is queued; what passes here the worker compiles again for its model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
)

from gateway.structured.grammar import checked, json_schema_grammar, tool_call_grammar

FUNCTION_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names
MAX_TOOLS = 128  # OpenAI's limit

FunctionName = Annotated[str, Field(pattern=FUNCTION_NAME_PATTERN)]


def _compilable_schema(schema: dict[str, Any]) -> dict[str, Any]:
    checked(json_schema_grammar(schema))
    return schema


JsonSchema = Annotated[dict[str, Any], AfterValidator(_compilable_schema)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)


class TextFormat(_Body):
    type: Literal["text"]


class JsonObjectFormat(_Body):
    type: Literal["json_object"]


class JsonSchemaSpec(_Body):
    name: FunctionName
    description: str | None = None
    json_schema: JsonSchema = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None  # busstop always holds the output to the schema


class JsonSchemaFormat(_Body):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


def _format_tag(value: Any) -> str:
    """The branch of ``response_format`` by its type; the "-" keeps the tag out of error params."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"type-{kind}"


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("type-text")]
    | Annotated[JsonObjectFormat, Tag("type-json_object")]
    | Annotated[JsonSchemaFormat, Tag("type-json_schema")],
    Discriminator(_format_tag, custom_error_type="invalid_response_format",
                  custom_error_message="type must be one of 'text', 'json_object' and 'json_schema'"),
]


def response_format_grammar(fmt: ResponseFormat | None) -> str | None:
    if isinstance(fmt, JsonObjectFormat):
        return json_schema_grammar({"type": "object"})
    if isinstance(fmt, JsonSchemaFormat):
        return json_schema_grammar(fmt.json_schema.json_schema)
    return None


class FunctionDefinition(_Body):
    name: FunctionName
    description: str | None = None
    parameters: JsonSchema | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition

    def as_dict(self) -> dict[str, Any]:
        return {"type": "function", "function": self.function.model_dump(exclude_none=True)}


class ChosenFunction(_Body):
    name: FunctionName


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: ChosenFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ToolCallFunction(_Body):
    name: FunctionName
    arguments: str


class ToolCallIn(_Body):
    """A call in an assistant message of the conversation so far."""

    id: Annotated[str, Field(min_length=1, max_length=256)]
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ToolFields(_Body):
    """``tools``, ``parallel_tool_calls`` and ``tool_choice`` (in that order: each checks the ones before)."""

    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    parallel_tool_calls: bool = True
    tool_choice: ToolChoice | None = None

    @field_validator("tool_choice")
    @classmethod
    def _known_tool(cls, value: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        tools: list[Tool] | None = info.data.get("tools")
        if value is None:
            return value
        if not tools:
            raise ValueError("tool_choice is only allowed when tools are specified")
        if isinstance(value, NamedToolChoice) and value.function.name not in {t.function.name for t in tools}:
            raise ValueError(f"names the function {value.function.name!r}, which is not in tools")
        forced_call_grammar(tools, value, info.data.get("parallel_tool_calls", True))  # fits the limits
        return value

    @property
    def effective_tool_choice(self) -> ToolChoice:
        """OpenAI's default: "auto" with tools, "none" without."""
        return self.tool_choice or ("auto" if self.tools else "none")

    def tool_grammar(self) -> str | None:
        """The grammar that forces a call: ``required`` or a named function; None otherwise."""
        return forced_call_grammar(self.tools or [], self.effective_tool_choice, self.parallel_tool_calls)


def forced_call_grammar(tools: list[Tool], choice: ToolChoice, parallel: bool) -> str | None:
    if not tools or choice in ("none", "auto"):
        return None
    if isinstance(choice, NamedToolChoice):
        tools = [t for t in tools if t.function.name == choice.function.name]
    return checked(tool_call_grammar([(t.function.name, t.function.parameters) for t in tools], parallel))
