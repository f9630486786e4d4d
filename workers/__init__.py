"""Worker pools: consume a pool's queue, claim runs, run them in warm child processes, heartbeat.

    from workers import Worker
    worker = Worker(broker, api, pool="default", concurrency=4)
    await worker.run_until_stopped()

`flowrelay worker --pool NAME` (engine/cli/worker_cmd.py) runs one against RabbitMQ.
"""

from workers.dispatch import Dispatch, encode_dispatch, parse_dispatch
from workers.errors import BadDispatch, ChildStartError, WorkerConfigError, WorkerError
from workers.worker import Mode, Worker, WorkerStats, declare_pool

__all__ = [
    "BadDispatch",
    "ChildStartError",
    "Dispatch",
    "Mode",
    "Worker",
    "WorkerConfigError",
    "WorkerError",
    "WorkerStats",
    "declare_pool",
    "encode_dispatch",
    "parse_dispatch",
]
