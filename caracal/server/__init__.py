"""``caracal serve``: the HTTP API, the LLM gateway and Prometheus metrics over one embedded home.

Layout: :mod:`.service` (the home, the enforcer and the group committer, shared by every request),
:mod:`.auth` (API keys to principals, access rules), :mod:`.errors` (Caracal errors to HTTP statuses and
JSON bodies), :mod:`.api` (the REST endpoints), :mod:`.gateway` (OpenAI- and Anthropic-compatible
endpoints with pre-call holds), :mod:`.metrics`, :mod:`.app` (the ASGI application) and :mod:`.runner`
(uvicorn in the foreground or in a thread).
"""
