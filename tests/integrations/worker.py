"""A worker process for the multi-process tests: runs one framework's embedded loop ``runs`` times on the home
of ``$CARACAL_HOME`` (and ``$CARACAL_DATABASE_URL`` when set) and prints a JSON line of what happened.

``python -m tests.integrations.worker FRAMEWORK BASE_URL API_KEY AGENT MARKER RUNS STREAM``
"""

from __future__ import annotations

import json
import sys

from caracal.exceptions import BudgetExceededError
from caracal.integrations.meter import LlmMeter
from caracal.sdk.client import CaracalClient
from tests.integrations.loops import run_loop


def main(argv: list[str]) -> None:
    framework, base_url, api_key, agent, marker, runs, stream = argv
    completed, refused = 0, []
    with CaracalClient() as client:
        meter = LlmMeter(client, agent)
        for run in range(int(runs)):
            try:
                run_loop(
                    framework,
                    base_url,
                    api_key,
                    f"{marker}-{run}",
                    stream=stream == "1",
                    meter=meter,
                    max_tokens=50,
                )
                completed += 1
            except BudgetExceededError as exc:
                refused.append(str(exc))
    print(json.dumps({"completed": completed, "refused": refused}))


if __name__ == "__main__":
    main(sys.argv[1:])
