"""Errors of the automations package.

    FlowrelayError (engine.errors)
    └── AutomationError                 root of the automations package's errors
        ├── AutomationFileError         a rule file refused whole; `.problems` lists every error as
        │                               `path:line:column: field: message`
        ├── TemplateError               a template that cannot be rendered (names it and why)
        ├── ActionError                 an action that failed (the action, the automation, why)
        │   └── WebhookRefused          a call-webhook URL whose host is not allowed
        └── AutomationNotFound          an unknown automation name (also an ObjectNotFound)
"""

from __future__ import annotations

from engine.errors import FlowrelayError, ObjectNotFound


class AutomationError(FlowrelayError):
    """Root of the automations package's errors."""


class AutomationFileError(AutomationError):
    """A rule file with errors; nothing of it was loaded."""

    def __init__(self, problems: list[str] | str) -> None:
        # A str: the message of one that crossed the RPC (one problem per line).
        self.problems = problems.splitlines() if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class TemplateError(AutomationError):
    pass


class ActionError(AutomationError):
    pass


class WebhookRefused(ActionError):
    pass


class AutomationNotFound(AutomationError, ObjectNotFound):
    pass


__all__ = [
    "ActionError",
    "AutomationError",
    "AutomationFileError",
    "AutomationNotFound",
    "TemplateError",
    "WebhookRefused",
]
