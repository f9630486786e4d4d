"""Callers that wait: run `run_deployment(..., wait=True)` for each batch id at once, as a user's
script would, and record when each call returned.

    python callers.py ARGS.json   # {"deployment", "batches", "out": file, "timeout": seconds}

Writes one line per call to `out`: `<batch> <flow run id> <state> <unix time returned>`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from engine import run_deployment


async def main(spec: dict) -> list[str]:

    async def call(batch: str) -> str:
        run = await run_deployment(spec["deployment"], {"batch_id": batch}, timeout=spec["timeout"])
        return f"{batch} {run.id} {run.state.name if run.state else None} {time.time():.6f}\n"

    return await asyncio.gather(*(call(b) for b in spec["batches"]))


if __name__ == "__main__":
    args = json.loads(Path(sys.argv[1]).read_text())
    Path(args["out"]).write_text("".join(asyncio.run(main(args))))
