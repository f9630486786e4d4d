"""flowrelay's public Python API.

    from engine import flow, task, get_run_logger
    from engine.states import Completed, Failed
"""

from engine.runtime.deployments import (
    create_flow_run,
    emit_event,
    run_deployment,
    wait_for_flow_run,
)
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
    "create_flow_run",
    "emit_event",
    "flow",
    "get_run_logger",
    "run_deployment",
    "task",
    "unmapped",
    "wait_for_flow_run",
]
