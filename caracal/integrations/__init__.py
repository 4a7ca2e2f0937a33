"""Metering of agent frameworks' LLM calls with Caracal embedded (no gateway): :mod:`.meter` is the shared
core (hold the worst case, settle from usage, release on error); :mod:`.langchain`, :mod:`.litellm` and
:mod:`.openai_agents` are thin adapters, each importing its framework (an extra: ``caracal-core[langchain]``,
``[litellm]``, ``[openai-agents]``). Through the gateway no adapter is needed: point the framework's
``base_url`` at ``caracal serve`` and use the agent's Caracal key as its API key."""
