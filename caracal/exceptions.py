"""Every error Caracal raises, rooted at :class:`CaracalError`.

Callers can catch ``CaracalError`` to handle anything Caracal refuses, or a narrower class to act on one
cause. Messages are written for a person: they say what was wrong and, where possible, what to do.

The tree::

    CaracalError
    ├── ConfigurationError            a setting, path or key is missing or unusable
    │   └── SchemaVersionError        the database's schema is older or newer than this Caracal knows
    ├── InexactMoneyError             money arithmetic that would need rounding (refused, never rounded)
    ├── LedgerError                   anything about the ledger file
    │   ├── InvalidLedgerEventError   bad input to an append; nothing was written (also a ValueError)
    │   ├── LedgerWriteError          an append failed (I/O error, lock timeout, refused ledger, database
    │   │                             unreachable); ``outcome_unknown`` when it may have been recorded
    │   │   └── LedgerLockTimeoutError    the exclusive lock was not obtained in time
    │   ├── LedgerReadError           the ledger could not be read
    │   │   └── LedgerCorruptError        a complete line does not parse, or ids are not contiguous
    │   └── LedgerVerificationError   ``verify`` found a problem (tampering, truncation, corruption)
    ├── MerkleError                   Merkle trees, proofs and checkpoints
    │   ├── ProofError                a proof could not be produced or does not verify
    │   └── CheckpointError           a checkpoint file or signature is missing, malformed or invalid
    ├── RegistryError                 a registry file (agents, policies, prices) is unreadable or unwritable
    ├── MigrationError                ``caracal migrate`` refused or failed; the source is unchanged
    ├── IdentityError                 agents
    │   ├── InvalidAgentError         bad input for an agent (also a ValueError)
    │   ├── AgentNotFoundError        no agent with that id or name
    │   ├── DuplicateAgentError       the name is taken
    │   └── AgentSuspendedError       the agent is suspended (denied)
    ├── PricingError                  prices
    │   ├── InvalidPriceError         bad input for a price (also a ValueError)
    │   └── UnknownPriceError         no price for a resource (refused, never priced at zero)
    ├── PolicyError                   budget policies
    │   ├── InvalidPolicyError        bad input for a policy (also a ValueError)
    │   ├── PolicyNotFoundError       no policy with that id
    │   └── NoActivePolicyError       the agent has no active policy (denied)
    ├── EnforcementError              checks, holds and settlement
    │   ├── BudgetExceededError       the action could take an agent past a budget (denied)
    │   ├── HoldNotFoundError         no open hold with that id (settled, released, expired or unknown)
    │   └── InvalidAmountError        a bad amount for check, reserve or settle (also a ValueError)
    ├── MeteringError                 turning usage into charges
    │   ├── InvalidMeteringEventError bad input for a metering event (also a ValueError)
    │   └── IdempotencyConflictError  the idempotency key was used with a different payload
    ├── GatewayError                  the LLM gateway
    │   ├── GatewayRequestError       a malformed request; nothing was forwarded or held (also a ValueError)
    │   ├── ResponseNotFoundError     no Responses API response of this agent with that id (HTTP 404)
    │   └── UpstreamError             the upstream provider failed or could not be reached
    ├── AlertError                    alert rules and their webhook deliveries
    │   ├── InvalidAlertError         bad input for an alert rule; nothing was changed (also a ValueError)
    │   └── AlertNotFoundError        no alert rule (or delivery) with that id
    ├── AuthError                     authentication and authorization for the HTTP API
        ├── AuthenticationError       no key, a malformed, unknown or revoked key (HTTP 401)
        ├── PermissionDeniedError     a valid key acting outside its scope (HTTP 403)
        ├── ApiKeyNotFoundError       no API key with that id
        └── InvalidApiKeyError        bad input for an API key; nothing was changed (also a ValueError)

``BudgetExceededError`` is also a ``PolicyError`` (as in Caracal Core v0.1).

**Caracal Core v0.1 names.** Code written against v0.1 catches its exception names; each is one of ours
(an alias: the same class) or, where v0.1 had a cause we did not name, a small subclass in this tree:

- aliases: ``DuplicateAgentNameError`` = DuplicateAgentError, ``InvalidAgentIDError`` = InvalidAgentError,
  ``PricebookError`` = PricingError, ``ResourceNotFoundError`` = UnknownPriceError,
  ``InvalidConfigurationError`` = ConfigurationError, ``StorageError`` = RegistryError,
  ``SDKError`` = ApiError, ``ConnectionError`` = ServerUnreachableError (shadows the builtin only where
  it is imported by name, as in v0.1);
- subclasses: ``PolicyEvaluationError`` (PolicyError: a budget could not be evaluated),
  ``MeteringCollectionError`` (MeteringError), ``PricebookLoadError`` (PricingError and RegistryError: a
  pricebook CSV that does not load), ``ConfigurationLoadError`` (ConfigurationError), ``FileReadError`` /
  ``FileWriteError`` / ``BackupError`` / ``RestoreError`` (RegistryError), ``SDKConfigurationError``
  (ApiError and ConfigurationError).
"""

from __future__ import annotations


class CaracalError(Exception):
    """Root of every error Caracal raises."""


class ConfigurationError(CaracalError):
    """A setting, path or key is missing or unusable."""


class SchemaVersionError(ConfigurationError):
    """The database holds a schema version this Caracal does not know (newer: upgrade Caracal) or has not
    been brought up to date (older: run ``caracal db upgrade``). Nothing runs against it."""


class InexactMoneyError(CaracalError, ArithmeticError):
    """A sum, difference or product of money cannot be represented exactly in Caracal's money context
    (:mod:`caracal.core.money`); it is refused, never rounded. Amounts within the documented bounds never
    cause it; amounts beyond them can exist only in ledger lines written before the bounds."""


class LedgerError(CaracalError):
    """Anything that went wrong with the ledger."""


class InvalidLedgerEventError(LedgerError, ValueError):
    """Input to an append was invalid; nothing was written."""


class LedgerWriteError(LedgerError):
    """An append failed and was not acknowledged; no partial line was left behind.

    ``outcome_unknown`` is True when the entries may nevertheless have been recorded (the connection to
    the database was lost during COMMIT): they are never reported as done, and must not be written again
    blindly; a retry with the same idempotency key is safe.
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False):
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class LedgerLockTimeoutError(LedgerWriteError):
    """The ledger's exclusive lock could not be obtained within the timeout."""


class LedgerReadError(LedgerError):
    """The ledger could not be read."""


class LedgerCorruptError(LedgerReadError):
    """A complete line does not parse, or event ids are not contiguous.

    ``line_number`` (1-based) and ``event_id`` (when known) say where.
    """

    def __init__(self, message: str, *, line_number: int | None = None, event_id: int | None = None):
        super().__init__(message)
        self.line_number = line_number
        self.event_id = event_id


class LedgerVerificationError(LedgerError):
    """Verification found a problem; ``first_bad_event_id`` names the first bad event when known."""

    def __init__(self, message: str, *, first_bad_event_id: int | None = None):
        super().__init__(message)
        self.first_bad_event_id = first_bad_event_id


class MerkleError(CaracalError):
    """Merkle trees, proofs and checkpoints."""


class ProofError(MerkleError):
    """A proof could not be produced for the request, or a proof does not verify."""


class CheckpointError(MerkleError):
    """A checkpoint file or signature is missing, malformed or invalid."""


class RegistryError(CaracalError):
    """A registry file (agents, policies, prices) could not be read or written."""


class MigrationError(CaracalError):
    """A migration between backends was refused (a source that fails verification, a target that holds
    other data) or failed; the message says what to do. The source is never changed."""


class IdentityError(CaracalError):
    """Anything about agents."""


class InvalidAgentError(IdentityError, ValueError):
    """Bad input for an agent; nothing was changed."""


class AgentNotFoundError(IdentityError):
    """No agent with that id or name."""


class DuplicateAgentError(IdentityError):
    """An agent with that name already exists."""


class AgentSuspendedError(IdentityError):
    """The agent is suspended; its actions are denied."""


class PricingError(CaracalError):
    """Anything about prices."""


class InvalidPriceError(PricingError, ValueError):
    """Bad input for a price; nothing was changed."""


class UnknownPriceError(PricingError):
    """No price is known for the resource; Caracal refuses rather than price it at zero."""


class PolicyError(CaracalError):
    """Anything about budget policies."""


class InvalidPolicyError(PolicyError, ValueError):
    """Bad input for a policy; nothing was changed."""


class PolicyNotFoundError(PolicyError):
    """No policy with that id."""


class NoActivePolicyError(PolicyError):
    """The agent has no active policy, so no action of it can be proven within budget (denied)."""


class EnforcementError(CaracalError):
    """Checks, holds and settlement."""


class BudgetExceededError(EnforcementError, PolicyError):
    """The action could take an agent (or an ancestor) past a budget. ``decision`` says which and why."""

    def __init__(self, message: str, *, decision: object = None):
        super().__init__(message)
        self.decision = decision


class HoldNotFoundError(EnforcementError):
    """No open hold with that id: it was settled, released, expired, or never existed."""


class InvalidAmountError(EnforcementError, ValueError):
    """A bad amount for check, reserve or settle."""


class MeteringError(CaracalError):
    """Turning usage into charges."""


class InvalidMeteringEventError(MeteringError, ValueError):
    """Bad input for a metering event; nothing was recorded."""


class IdempotencyConflictError(MeteringError):
    """The idempotency key was already used for a different payload."""


class GatewayError(CaracalError):
    """The LLM gateway."""


class GatewayRequestError(GatewayError, ValueError):
    """A request to the gateway is malformed; nothing was forwarded or held."""


class ResponseNotFoundError(GatewayError):
    """No Responses API response with that id was created through the gateway for this agent (HTTP 404).

    Said the same way whether the id is unknown or another agent's, so an agent cannot learn which ids
    exist; nothing was forwarded or held."""


class UpstreamError(GatewayError):
    """The upstream provider failed or could not be reached.

    ``outcome``, when given, is what happened to the call's hold ("released, nothing billed"...) in words
    that name no host or setting: it is what an agent key is told (the message, which names the upstream's
    address, goes to the operator).
    """

    def __init__(self, message: str, *, outcome: str | None = None):
        super().__init__(message)
        self.outcome = outcome


class AlertError(CaracalError):
    """Alert rules and their webhook deliveries."""


class InvalidAlertError(AlertError, ValueError):
    """Bad input for an alert rule (its name, URL, threshold, scope or format); nothing was changed."""


class AlertNotFoundError(AlertError):
    """No alert rule (or delivery) with that id."""


class AuthError(CaracalError):
    """Authentication and authorization for the HTTP API."""


class AuthenticationError(AuthError):
    """The request carries no API key, or one that is malformed, unknown or revoked (HTTP 401).

    The message says which ("missing", "invalid" or "revoked") and never repeats the secret.
    """


class PermissionDeniedError(AuthError):
    """A valid API key acting outside its scope, e.g. an agent key acting for another agent (HTTP 403)."""


class ApiKeyNotFoundError(AuthError):
    """No API key with that id."""


class InvalidApiKeyError(AuthError, ValueError):
    """Bad input for an API key (role, agent id, label); nothing was changed."""


class ApiError(CaracalError):
    """The HTTP API and its remote client."""


class InvalidRequestError(ApiError, ValueError):
    """A request to the HTTP API is malformed (its shape, its size); nothing was changed."""


class ServerUnreachableError(ApiError):
    """The remote client could not reach the server or could not read its answer. Nothing can be proven
    within budget, so the action is denied (fail closed)."""


# ---------------------------------------------------------------------------------------------------------
# Caracal Core v0.1 names (see the module docstring): aliases of our classes, or subclasses in this tree.

DuplicateAgentNameError = DuplicateAgentError
InvalidAgentIDError = InvalidAgentError
PricebookError = PricingError
ResourceNotFoundError = UnknownPriceError
InvalidConfigurationError = ConfigurationError
StorageError = RegistryError
SDKError = ApiError
ConnectionError = ServerUnreachableError


class PolicyEvaluationError(PolicyError):
    """A budget could not be evaluated (the ledger or a registry failed); the action is denied (v0.1)."""


class MeteringCollectionError(MeteringError):
    """A metering event could not be collected (v0.1)."""


class PricebookLoadError(PricingError, RegistryError):
    """A pricebook CSV file could not be loaded: unreadable, missing columns, a bad price (v0.1)."""


class ConfigurationLoadError(ConfigurationError):
    """A configuration file could not be read (v0.1)."""


class FileReadError(RegistryError):
    """A file could not be read (v0.1)."""


class FileWriteError(RegistryError):
    """A file could not be written (v0.1)."""


class BackupError(RegistryError):
    """A backup could not be made (v0.1)."""


class RestoreError(RegistryError):
    """A backup could not be restored (v0.1)."""


class SDKConfigurationError(ApiError, ConfigurationError):
    """The SDK's configuration is unusable (v0.1)."""
