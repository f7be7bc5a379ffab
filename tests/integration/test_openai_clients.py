"""Real OpenAI clients against the live app: the official ``openai`` package and langchain-openai.

Each call is what a user of those libraries writes, unchanged (ragserve's extensions go in
``extra_body``); errors must surface as the client's own exception classes with the field named.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")
QUESTION = "What does Nimbus Vault error code E-4471 mean?"


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="not-needed-on-loopback", max_retries=0, timeout=240)


@pytest.fixture(scope="module")
def gen_model(stack) -> str:
    return stack.cfg.generator.model


def test_models_list_and_retrieve(client, stack, gen_model: str) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [gen_model, stack.cfg.encoder.model]
    assert client.models.retrieve(gen_model).id == gen_model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_plain_with_sources_and_the_current_limit_name(client, gen_model: str) -> None:
    r = client.chat.completions.create(model=gen_model, messages=[{"role": "user", "content": QUESTION}],
                                       max_completion_tokens=8, user="u1", seed=3, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert r.usage.completion_tokens <= 8 and choice.finish_reason in ("length", "stop")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    extra = r.model_extra
    assert extra["sources"][0]["source"].endswith("nimbus_vault_error_codes.md")
    assert extra["context"]["sources"] and extra["search_query"]["text"] == QUESTION


def test_chat_streamed_with_usage_before_done(client, gen_model: str) -> None:
    stream = client.chat.completions.create(model=gen_model, messages=[{"role": "user", "content": QUESTION}],
                                            max_completion_tokens=12, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].model_extra["sources"] and chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens <= 12 and last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks[:-1] if c.choices][-1] in ("length", "stop")


def test_content_parts_and_image_parts(client, gen_model: str) -> None:
    parts = [{"type": "text", "text": "What does Nimbus Vault error"}, {"type": "text", "text": "E-4471 mean?"}]
    r = client.chat.completions.create(model=gen_model, messages=[{"role": "user", "content": parts}],
                                       max_completion_tokens=4)
    assert r.model_extra["search_query"]["text"] == "What does Nimbus Vault error\nE-4471 mean?"
    image = [{"type": "image_url", "image_url": {"url": "https://example.org/a.png"}}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=gen_model, messages=[{"role": "user", "content": image}])
    assert err.value.body["param"] == "messages.0.content.0" and "text only" in err.value.body["message"]


def test_json_mode_returns_json(client, gen_model: str) -> None:
    schema = {"type": "object", "properties": {"code": {"type": "string", "maxLength": 12}},
              "required": ["code"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=gen_model, max_completion_tokens=48, temperature=0,
        messages=[{"role": "user", "content": "Which error code means a shard checksum mismatch? Answer in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert set(json.loads(r.choices[0].message.content)) == {"code"}
    r = client.chat.completions.create(model=gen_model, max_completion_tokens=48, temperature=0,
                                       messages=[{"role": "user", "content": "Reply with a JSON object."}],
                                       response_format={"type": "json_object"}, extra_body={"retrieval": False})
    if r.choices[0].finish_reason == "stop":  # a 135M model may run to the limit inside a string
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.lstrip().startswith("{")


def test_n_choices_and_logprobs(client, gen_model: str) -> None:
    r = client.chat.completions.create(model=gen_model, messages=[{"role": "user", "content": "Say hi."}], n=2,
                                       max_completion_tokens=3, temperature=1.0, logprobs=True, top_logprobs=2,
                                       extra_body={"retrieval": False})
    assert [c.index for c in r.choices] == [0, 1]
    lp = r.choices[0].logprobs.content
    assert lp and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lp)
    assert "".join(t.token for t in lp) == r.choices[0].message.content


def test_completions_plain_echo_and_streamed(client, gen_model: str) -> None:
    r = client.completions.create(model=gen_model, prompt="The water pump", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens <= 6
    echoed = client.completions.create(model=gen_model, prompt="The water pump", max_tokens=6, temperature=0,
                                       echo=True)
    assert echoed.choices[0].text == "The water pump" + r.choices[0].text
    two = client.completions.create(model=gen_model, prompt=["One,", "Alpha,"], max_tokens=3, temperature=0)
    assert sorted(c.index for c in two.choices) == [0, 1]
    parts = list(client.completions.create(model=gen_model, prompt="The water pump", max_tokens=6, temperature=0,
                                           stream=True))
    assert "".join(c.choices[0].text for c in parts if c.choices) == r.choices[0].text


def test_embeddings_default_base64_and_float(client, stack) -> None:
    texts = ["water pump pressure", "茶园海拔"]
    default = client.embeddings.create(model=stack.cfg.encoder.model, input=texts)  # the client asks for base64
    floats = client.embeddings.create(model=stack.cfg.encoder.model, input=texts, encoding_format="float")
    assert [len(d.embedding) for d in default.data] == [384, 384]
    assert max(abs(a - b) for a, b in zip(default.data[0].embedding, floats.data[0].embedding)) < 1e-6
    # Usage is the encoder's own token count ([CLS] and [SEP] included), not characters / 4.
    one = client.embeddings.create(model=stack.cfg.encoder.model, input="water pump pressure")
    assert one.usage.prompt_tokens == 5 and default.usage.prompt_tokens > one.usage.prompt_tokens
    assert client.embeddings.create(model=stack.cfg.encoder.model, input="x", dimensions=384).data
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=stack.cfg.encoder.model, input="x", dimensions=64)
    assert err.value.body["param"] == "dimensions"


def test_a_bad_request_names_its_field(client, gen_model: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=gen_model, messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert err.value.status_code == 400 and err.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_langchain_chat_and_embeddings(stack, gen_model: str) -> None:
    lc = pytest.importorskip("langchain_openai")
    chat = lc.ChatOpenAI(base_url=f"{stack.url}/v1", api_key="not-needed", model=gen_model, max_tokens=12,
                         temperature=0, max_retries=0, timeout=240)
    answer = chat.invoke(QUESTION)
    assert answer.content.strip() and answer.usage_metadata["output_tokens"] <= 12
    streamed = "".join(c.content for c in chat.stream(QUESTION))
    assert streamed.strip()
    emb = lc.OpenAIEmbeddings(base_url=f"{stack.url}/v1", api_key="not-needed", model=stack.cfg.encoder.model,
                              check_embedding_ctx_length=False, max_retries=0)
    vectors = emb.embed_documents(["water pump pressure", "error E-4471"])
    assert [len(v) for v in vectors] == [384, 384]
    assert len(emb.embed_query("pump")) == 384
