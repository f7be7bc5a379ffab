"""The OpenAI surface mapped to the stages: conversions and the 400s naming what cannot be honoured."""

from __future__ import annotations

import pytest

from deployments.errors import InvalidRequestError, NotFoundError
from deployments.ingress import openai_compat as oa
from deployments.protocol.openai import ChatCompletionMessage, ChatCompletionRequest, CompletionRequest
from deployments.protocol.stages import StructuredOutput, TokenLogprob


def chat(**kw: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **kw})


def msg(**kw: object) -> ChatCompletionMessage:
    return ChatCompletionMessage.model_validate(kw)


def test_text_parts_are_joined_and_developer_is_system() -> None:
    out = oa.chat_messages([
        msg(role="developer", content="Be brief."),
        msg(role="user", content=[{"type": "text", "text": "What is"}, {"type": "text", "text": "E-4471?"}]),
        msg(role="assistant", content=None, refusal="I cannot say."),
    ])
    assert [(m.role, m.content) for m in out] == [("system", "Be brief."), ("user", "What is\nE-4471?"),
                                                  ("assistant", "I cannot say.")]


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "u"}}]},
     "messages.0.content.1"),
    ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, "messages.0.content.0"),
    ({"role": "tool", "content": "42", "tool_call_id": "t1"}, "messages.0.role"),
    ({"role": "assistant", "content": "", "tool_calls": [{"id": "t1"}]}, "messages.0.tool_calls"),
])
def test_what_the_model_cannot_read_is_a_400_naming_it(message: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        oa.chat_messages([msg(**message)])
    assert err.value.param == param and err.value.status == 400


def test_the_smaller_limit_wins_and_is_named() -> None:
    assert oa.chat_limits(chat()) == (None, "max_completion_tokens")
    assert oa.chat_limits(chat(max_completion_tokens=8)) == (8, "max_completion_tokens")
    assert oa.chat_limits(chat(max_tokens=5, max_completion_tokens=8)) == (5, "max_tokens")


def test_stop_and_logit_bias() -> None:
    assert oa.stop_strings("\n") == ("\n",) and oa.stop_strings(None) == ()
    assert oa.stop_strings(["a", "b"]) == ("a", "b")
    with pytest.raises(InvalidRequestError, match="at most 8") as err:
        oa.stop_strings(["x"] * 9)
    assert err.value.param == "stop"
    assert oa.logit_bias({"15": -100, "7": 5}) == ((15, -100.0), (7, 5.0))
    for bad in ({"hello": 1}, {"3": 101}):
        with pytest.raises(InvalidRequestError) as err:
            oa.logit_bias(bad)
        assert err.value.param == "logit_bias"


def test_chat_options() -> None:
    assert oa.chat_options(chat()) == {"logprobs": None, "structured": None}
    assert oa.chat_options(chat(logprobs=True))["logprobs"] == 0
    assert oa.chat_options(chat(logprobs=True, top_logprobs=3))["logprobs"] == 3
    assert oa.chat_options(chat(response_format={"type": "json_object"}))["structured"] == \
        StructuredOutput(kind="json_object")
    schema = {"type": "object", "properties": {"bar": {"type": "number"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
    assert oa.chat_options(chat(response_format=fmt))["structured"].json_schema == schema
    assert oa.chat_options(chat(tools=[{"type": "function"}], tool_choice="auto"))["logprobs"] is None


@pytest.mark.parametrize(("kw", "param"), [
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
])
def test_what_cannot_be_honoured_is_named(kw: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        oa.chat_options(chat(**kw))
    assert err.value.param == param


def test_completion_prompts() -> None:
    assert oa.completion_prompts(CompletionRequest(prompt="a")) == ["a"]
    assert oa.completion_prompts(CompletionRequest(prompt=["a", "b"], n=2, best_of=2)) == ["a", "b"]
    for kw, param in (({"prompt": [1, 2]}, "prompt"), ({"prompt": [[1]]}, "prompt"), ({"prompt": " "}, "prompt"),
                      ({"prompt": "a", "suffix": "z"}, "suffix"), ({"prompt": "a", "best_of": 3}, "best_of")):
        with pytest.raises(InvalidRequestError) as err:
            oa.completion_prompts(CompletionRequest.model_validate(kw))
        assert err.value.param == param


def test_served_model_and_its_hub_alias() -> None:
    assert oa.served_model(None, "bundled:SmolLM2-135M-Instruct") == "bundled:SmolLM2-135M-Instruct"
    assert oa.served_model("HuggingFaceTB/SmolLM2-135M-Instruct", "bundled:SmolLM2-135M-Instruct") == \
        "bundled:SmolLM2-135M-Instruct"
    with pytest.raises(NotFoundError) as err:
        oa.served_model("gpt-4o", "bundled:SmolLM2-135M-Instruct")
    assert err.value.param == "model" and err.value.status == 404 and "/v1/models" in err.value.message


def test_logprobs_in_both_shapes() -> None:
    toks = [TokenLogprob(token="Hi", logprob=-0.5, top=(("Hi", -0.5), ("Hey", -1.5))),
            TokenLogprob(token="!", logprob=-0.1, top=(("!", -0.1),))]
    chat_lp = oa.chat_logprobs(toks)
    assert [c.token for c in chat_lp.content] == ["Hi", "!"]
    assert chat_lp.content[0].bytes == [72, 105] and chat_lp.content[0].top_logprobs[1].token == "Hey"
    text_lp = oa.completion_logprobs(toks, offset=3)
    assert text_lp.tokens == ["Hi", "!"] and text_lp.token_logprobs == [-0.5, -0.1]
    assert text_lp.text_offset == [3, 5] and text_lp.top_logprobs[0] == {"Hi": -0.5, "Hey": -1.5}
