"""Which headers cross the gateway, each way, and with which provider key.

Invariants: the agent's Caracal key never goes upstream (the provider key from the server's configuration
replaces it) and the provider key never comes back; of the provider's response headers only those a client
uses pass (retry advice, request ids, rate limits), never its cookies, encodings or lengths.
"""

from __future__ import annotations

import os

import aiohttp
from starlette.requests import Request

from caracal.config import UpstreamSettings
from caracal.exceptions import ConfigurationError

ANTHROPIC_VERSION = "2023-06-01"
"""Sent to Anthropic when the client named no ``anthropic-version``."""
PASSED_REQUEST_HEADERS = ("anthropic-version", "anthropic-beta", "openai-organization", "openai-project")
_PASSED_RESPONSE_HEADERS = frozenset(("retry-after", "x-request-id", "request-id", "openai-processing-ms"))
_PASSED_RESPONSE_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


def passed_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    """The provider's response headers a client uses (retry-after for backoff, request ids, rate limits);
    never its cookies, encodings or lengths (the gateway sets its own)."""
    return {
        name: value
        for name, value in response.headers.items()
        if (lower := name.lower()) in _PASSED_RESPONSE_HEADERS or lower.startswith(_PASSED_RESPONSE_PREFIXES)
    }


def provider_key(upstream: UpstreamSettings) -> str:
    """The upstream's key from the configuration or its environment variable, else
    :class:`ConfigurationError` saying where to set it."""
    key = upstream.api_key or os.environ.get(upstream.api_key_env)
    if not key:
        raise ConfigurationError(
            f"no provider key for the {upstream.api} upstream: set ${upstream.api_key_env} for the server, "
            f"or gateway.{upstream.api}.api_key in config.toml"
        )
    return key


def upstream_headers(upstream: str, key: str, request: Request) -> dict[str, str]:
    """The headers of a request forwarded to ``upstream`` (``"openai"`` or ``"anthropic"``) with ``key``."""
    headers = {"content-type": "application/json", "accept-encoding": "identity"}  # bodies read as sent
    for name in PASSED_REQUEST_HEADERS:
        value = request.headers.get(name)
        if value is not None:
            headers[name] = value
    if upstream == "anthropic":
        headers["x-api-key"] = key
        headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    else:
        headers["authorization"] = f"Bearer {key}"
    return headers


__all__ = ["ANTHROPIC_VERSION", "passed_headers", "provider_key", "upstream_headers"]
