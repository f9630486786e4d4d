"""flowrelay's public Python API.

    from engine import flow, task, get_run_logger
    from engine.states import Completed, Failed
"""

from engine.runtime.flows import Flow, flow
from engine.runtime.futures import TaskFuture
from engine.runtime.logger import get_run_logger
from engine.runtime.tasks import Task, task, unmapped
from engine.states import State

__all__ = [
    "Flow",
    "State",
    "Task",
    "TaskFuture",
    "flow",
    "get_run_logger",
    "task",
    "unmapped",
]
