"""flowrelay's automations: YAML rules that turn events into actions (see README "Automations").

    from automations import apply_automations, read_automations, pause_automation
"""

from automations.client import (
    apply_automations,
    delete_automation,
    pause_automation,
    read_automation,
    read_automations,
    resume_automation,
)
from automations.errors import AutomationFileError

__all__ = [
    "AutomationFileError",
    "apply_automations",
    "delete_automation",
    "pause_automation",
    "read_automation",
    "read_automations",
    "resume_automation",
]
