"""Launch one run per batch id through the public API, as a user's script would, retrying each
until the server acknowledges it (the server may be killed meanwhile). The idempotency key makes
a retry of a creation whose reply was lost return the same run.

    python launcher.py ARGS.json   # {"deployment", "batches", "key_prefix", "pace": seconds between}

Prints `launched N retries R` at the end.
"""

from __future__ import annotations

import json
import sys
import time

from engine import create_flow_run


def main(path: str) -> None:
    spec = json.loads(open(path).read())
    retries = 0
    for batch in spec["batches"]:
        time.sleep(spec.get("pace", 0.0))
        deadline = time.monotonic() + 300
        while True:
            try:
                create_flow_run(spec["deployment"], {"batch_id": batch},
                                idempotency_key=f"{spec['key_prefix']}-{batch}")
                break
            except Exception as exc:  # noqa: BLE001 - the server is down: try again
                retries += 1
                if time.monotonic() > deadline:
                    raise SystemExit(f"could not launch {batch}: {exc!r}") from exc
                time.sleep(0.3)
    print(f"launched {len(spec['batches'])} retries {retries}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
