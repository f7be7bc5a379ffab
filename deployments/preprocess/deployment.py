"""The preprocess deployment: validates a question and prepares it for both retrievers."""

from __future__ import annotations

from ray import serve

from deployments import metrics
from deployments.config import PreprocessConfig
from deployments.preprocess import text
from deployments.protocol.stages import PreparedQuery


@serve.deployment(name="preprocess")
class Preprocessor:
    """Pure-CPU and cheap (well under a millisecond per question once jieba is loaded)."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        text.warm_up()  # jieba's dictionary takes ~1 s: pay it at start, not on a request

    async def preprocess(self, question: str) -> PreparedQuery:
        """Normalise and tokenise one question.

        Raises:
            InvalidRequestError: empty question. PayloadTooLargeError: over the length limit.
        """
        with metrics.stage_call("preprocess"):
            return text.prepare_query(question, self.cfg)

    async def analyze(self, texts: list[str]) -> list[str]:
        """The ``lexical`` field of document chunks: the same tokenisation as questions get."""
        # Not a stage_call: the stage latency metrics are the query path's (their alerts assume it).
        return [text.document_lexical(t, self.cfg) for t in texts]
