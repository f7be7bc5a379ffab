"""The HTTP ingress: stage composition (``pipeline``), one router per API surface (``routes``),
HTTP plumbing (``http``), the OpenAPI document (``openapi``), the OpenAI mapping
(``openai_compat``), retrieval for follow-ups (``conversation``) and the Serve deployment
(``deployment``)."""
