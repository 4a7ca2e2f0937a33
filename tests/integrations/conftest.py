"""The framework tests: LiteLLM must not fetch its price map from the network at import, and the Agents SDK
must not export traces (both read the environment, so it is set before any test imports them)."""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
