"""Automations as pydantic models, validated straight from YAML.

An automation is a trigger and a list of actions:

    Automation
    ├── trigger: one of (selected by `type`)
    │   ├── EventTrigger               type: event
    │   ├── FlowRunStateChangeTrigger  type: flow-run-state-change   (expect/after hold states)
    │   ├── CompoundTrigger            type: compound   (require all|any|N of child triggers,
    │   │                                                 joined by a `correlate` key, in a window)
    │   └── SequenceTrigger            type: sequence   (the children, in order)
    └── actions: list of (selected by `type`)
        run-deployment, pause-deployment, resume-deployment, cancel-flow-run,
        change-flow-run-state, emit-event, call-webhook, pause-automation, resume-automation

Matching (`match`, `match_related`): keys name resource fields (`flow`, `deployment`, `name`,
`tags`, `id`, `work_pool`, or any field a custom event's resource carries; a dotted key reaches
into nested values). A value is a string with `*` wildcards, a leading `!` to negate, or a list
(any of). A list-valued field (tags) matches when any of its items does.

`for_each` entries and `correlate` reach into the whole event: a bare word is a resource field
(`flow`), a dotted path starts at the event (`payload.parameters.batch_id`, `resource.name`).
`correlate` is a template (`{{ event.payload.parameters.batch_id }}`).

All fields that are rendered at firing time (action parameters, deployment names, URLs ...) are
Jinja templates rendered in a sandbox (see `automations.templates`).
"""

from __future__ import annotations

import datetime as dt
import difflib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from engine.durations import parse_duration
from engine.states import STATE_NAMES

__all__ = [
    "Action",
    "Automation",
    "AutomationsFile",
    "CallWebhookAction",
    "CancelFlowRunAction",
    "ChangeFlowRunStateAction",
    "CompoundTrigger",
    "Duration",
    "EmitEventAction",
    "EventTrigger",
    "FlowRunStateChangeTrigger",
    "MatchValue",
    "PauseAutomationAction",
    "PauseDeploymentAction",
    "ResumeAutomationAction",
    "ResumeDeploymentAction",
    "RunDeploymentAction",
    "SequenceTrigger",
    "SimpleTrigger",
    "Trigger",
    "state_event_name",
]

#: Automation names are used on the command line and in idempotency keys.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$"

FLOW_RUN_EVENT_PREFIX = "flow-run."


#: The longest window, cooldown, delay or timeout an automation may hold: the rule engine adds
#: them to the clock, and a date past the year 9999 would fail every event it evaluates.
MAX_DURATION = dt.timedelta(days=3650)


def _duration(value: Any) -> dt.timedelta:
    duration = parse_duration(value)
    if duration > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than {MAX_DURATION.days} days, the longest an automation may wait")
    return duration


#: "30s", "10m", "2h", "1h30m", "1d", seconds as a number, or ISO 8601 ("PT10M").
Duration = Annotated[dt.timedelta, BeforeValidator(_duration)]

#: A match value: "exact", "prefix-*", "!negated", or a list of those (any of).
MatchValue = str | int | float | bool | list[str | int | float | bool]


def _state_name(value: Any) -> str:
    """A state name as users write it (`Completed`, `completed`, `AwaitingRetry`), canonical."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a state name")
    if "*" in value:
        return value
    for name in STATE_NAMES:
        if name.lower() == value.lower():
            return name
    close = difflib.get_close_matches(value, list(STATE_NAMES), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; states are {', '.join(STATE_NAMES)}"
    raise ValueError(f"{value!r} is not a state{hint}")


StateName = Annotated[str, BeforeValidator(_state_name)]


def state_event_name(state_or_event: str) -> str:
    """`Completed` → `flow-run.Completed`; a full event name is returned as it is."""
    if "." in state_or_event:
        return state_or_event
    return f"{FLOW_RUN_EVENT_PREFIX}{state_or_event}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# --- triggers -------------------------------------------------------------------------------------
class _SimpleTriggerBase(_Model):
    #: How compound/sequence triggers and templates (`events.<name>`) refer to this child.
    name: str | None = None
    match: dict[str, MatchValue] = Field(default_factory=dict)
    #: One mapping (one related resource must match all of it) or a list of such mappings
    #: (each must be matched by some related resource). Keys may include `role`.
    match_related: dict[str, MatchValue] | list[dict[str, MatchValue]] = Field(default_factory=dict)
    #: Resource filter of the arming (`after`) events when they concern another resource than
    #: the expected ones ("downstream not Completed within 30 min after *upstream* Completed").
    #: Default: `match` (and `match_related`) filter the arming events too, as in Prefect.
    after_match: dict[str, MatchValue] | None = None
    #: Separate trigger state per value of these fields (e.g. per flow, per batch).
    for_each: list[str] = Field(default_factory=list)
    #: Fire once `threshold` matching events arrived within `within` (per `for_each` bucket).
    threshold: int = Field(default=1, ge=1)
    within: Duration = dt.timedelta(0)
    #: reactive: fire on the expected events. proactive: fire when they did NOT arrive within
    #: `within` after the trigger was armed (by an `after` event, or at load and after each firing).
    posture: Literal["reactive", "proactive"] = "reactive"

    @model_validator(mode="after")
    def _check_window(self) -> _SimpleTriggerBase:
        if self.after_match is not None and not self.after_events():
            raise ValueError("`after_match` filters the `after` events: give `after` too")
        if self.posture == "proactive" and self.within <= dt.timedelta(0):
            raise ValueError("a proactive trigger needs `within` (how long to wait for the expected events)")
        if self.threshold > 1 and self.within <= dt.timedelta(0):
            raise ValueError("`threshold` above 1 needs `within` (the window the events must fall in)")
        return self

    def expected_events(self) -> list[str]:
        """Event name patterns this trigger counts (may contain `*`); empty means any event."""
        raise NotImplementedError

    def after_events(self) -> list[str]:
        """Event name patterns that arm this trigger; empty means it is always armed."""
        raise NotImplementedError


class EventTrigger(_SimpleTriggerBase):
    """Any event: custom (`batch.ready`), state (`flow-run.Completed`), `deployment.*`, ..."""

    type: Literal["event"]
    expect: list[str] = Field(default_factory=list)
    after: list[str] = Field(default_factory=list)

    def expected_events(self) -> list[str]:
        return list(self.expect)

    def after_events(self) -> list[str]:
        return list(self.after)


class FlowRunStateChangeTrigger(_SimpleTriggerBase):
    """A flow run entering one of `expect` (state names, e.g. `Completed`; empty = any state)."""

    type: Literal["flow-run-state-change"]
    expect: list[StateName] = Field(default_factory=list)
    #: States (or full event names) that arm the trigger.
    after: list[str] = Field(default_factory=list)

    @field_validator("after")
    @classmethod
    def _after_states(cls, values: list[str]) -> list[str]:
        return [v if "." in v else _state_name(v) for v in values]

    def expected_events(self) -> list[str]:
        if not self.expect:
            return [f"{FLOW_RUN_EVENT_PREFIX}*"]
        return [state_event_name(s) for s in self.expect]

    def after_events(self) -> list[str]:
        return [state_event_name(s) for s in self.after]


SimpleTrigger = Annotated[EventTrigger | FlowRunStateChangeTrigger, Field(discriminator="type")]


class _JoinTriggerBase(_Model):
    name: str | None = None
    triggers: list[SimpleTrigger] = Field(min_length=1)
    #: A template giving the join key; events with different keys are joined separately.
    #: Without it, all events of the window form one join.
    correlate: str | None = None
    #: How long a join stays open after its first child event; then it expires.
    within: Duration = dt.timedelta(hours=24)
    #: Actions run when a window closes with a partial join (besides the
    #: `automation.join.expired` event that is always emitted).
    on_expire: list[Action] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_children(self) -> _JoinTriggerBase:
        names = self.child_names()
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"child triggers need distinct names; repeated: {', '.join(dupes)} (set `name:` on each)")
        for i, child in enumerate(self.triggers):
            if child.posture == "proactive":
                raise ValueError(f"triggers[{i}]: a proactive child is not supported inside a join; use `on_expire` for 'did not happen in time'")
            ignored = [f for f in ("after", "after_match", "for_each") if getattr(child, f)]
            ignored += ["threshold"] if child.threshold != 1 else []
            ignored += ["within"] if child.within else []
            if ignored:
                raise ValueError(
                    f"triggers[{i}]: {', '.join(ignored)} cannot be set on a child of a {self.type} trigger "  # type: ignore[attr-defined]
                    "(the join's own `within` and `correlate` decide); use a separate automation"
                )
        if self.within <= dt.timedelta(0):
            raise ValueError("`within` must be positive")
        return self

    def child_names(self) -> list[str]:
        """Each child's name: its `name`, else the plain `deployment` or `flow` it matches,
        else `trigger_<n>` (1-based)."""
        out = []
        for i, child in enumerate(self.triggers, start=1):
            name = child.name
            if name is None:
                for key in ("deployment", "flow"):
                    value = child.match.get(key)
                    if isinstance(value, str) and "*" not in value and not value.startswith("!"):
                        name = value
                        break
            out.append(name or f"trigger_{i}")
        return out


class CompoundTrigger(_JoinTriggerBase):
    type: Literal["compound"]
    require: Literal["all", "any"] | Annotated[int, Field(ge=1)] = "all"

    @model_validator(mode="after")
    def _check_require(self) -> CompoundTrigger:
        if isinstance(self.require, int) and self.require > len(self.triggers):
            raise ValueError(f"require: {self.require} is more than the {len(self.triggers)} child triggers")
        return self

    def required_count(self) -> int:
        if self.require == "all":
            return len(self.triggers)
        if self.require == "any":
            return 1
        return int(self.require)


class SequenceTrigger(_JoinTriggerBase):
    type: Literal["sequence"]


Trigger = Annotated[
    EventTrigger | FlowRunStateChangeTrigger | CompoundTrigger | SequenceTrigger,
    Field(discriminator="type"),
]


# --- actions --------------------------------------------------------------------------------------
_DEFAULT_RUN = "{{ event.resource.id }}"


class RunDeploymentAction(_Model):
    type: Literal["run-deployment"]
    #: FLOW/DEPLOYMENT (a template).
    deployment: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    flow_run_name: str | None = None
    tags: list[str] = Field(default_factory=list)
    #: Default: derived from the firing, so a firing never launches two runs.
    idempotency_key: str | None = None
    start_in: Duration | None = None


class PauseDeploymentAction(_Model):
    type: Literal["pause-deployment"]
    #: Default: the deployment of the triggering event's run.
    deployment: str | None = None


class ResumeDeploymentAction(_Model):
    type: Literal["resume-deployment"]
    deployment: str | None = None


class CancelFlowRunAction(_Model):
    type: Literal["cancel-flow-run"]
    #: A run id or `flow-run/<id>` (a template). Default: the triggering event's run.
    flow_run: str = _DEFAULT_RUN
    message: str | None = None


class ChangeFlowRunStateAction(_Model):
    type: Literal["change-flow-run-state"]
    flow_run: str = _DEFAULT_RUN
    state: StateName
    message: str | None = None

    @field_validator("state")
    @classmethod
    def _no_wildcard(cls, value: str) -> str:
        if "*" in value:
            raise ValueError("the target state must be one state, not a pattern")
        return value


class EmitEventAction(_Model):
    type: Literal["emit-event"]
    event: str
    resource: dict[str, Any] = Field(default_factory=dict)
    payload: dict[str, Any] = Field(default_factory=dict)
    related: list[dict[str, Any]] = Field(default_factory=list)


class CallWebhookAction(_Model):
    type: Literal["call-webhook"]
    #: Must be on `automations.webhook_allow_hosts` in config.yaml.
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    #: JSON body (templates inside are rendered). Default: the triggering event.
    body: Any = None
    timeout: Duration = dt.timedelta(seconds=10)
    retries: int = Field(default=2, ge=0, le=10)


class PauseAutomationAction(_Model):
    type: Literal["pause-automation"]
    #: Default: this automation.
    automation: str | None = None


class ResumeAutomationAction(_Model):
    type: Literal["resume-automation"]
    automation: str


Action = Annotated[
    RunDeploymentAction
    | PauseDeploymentAction
    | ResumeDeploymentAction
    | CancelFlowRunAction
    | ChangeFlowRunStateAction
    | EmitEventAction
    | CallWebhookAction
    | PauseAutomationAction
    | ResumeAutomationAction,
    Field(discriminator="type"),
]

ACTION_TYPES = (
    "run-deployment", "pause-deployment", "resume-deployment", "cancel-flow-run",
    "change-flow-run-state", "emit-event", "call-webhook", "pause-automation", "resume-automation",
)
TRIGGER_TYPES = ("event", "flow-run-state-change", "compound", "sequence")


# --- the automation -------------------------------------------------------------------------------
class Automation(_Model):
    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=200)]
    description: str = ""
    enabled: bool = True
    trigger: Trigger
    actions: list[Action] = Field(min_length=1)
    #: No second firing within this period after a firing (per `for_each` bucket).
    cooldown: Duration | None = None
    #: Accept an automation whose actions can re-trigger it (see the loader's loop guard).
    allow_loops: bool = False

    def simple_triggers(self) -> list[tuple[str, EventTrigger | FlowRunStateChangeTrigger]]:
        """(child name, trigger) for each simple trigger; a simple automation has one, named
        `event`."""
        trigger = self.trigger
        if isinstance(trigger, CompoundTrigger | SequenceTrigger):
            return list(zip(trigger.child_names(), trigger.triggers, strict=True))
        return [("event", trigger)]

    def deployments_launched(self) -> list[str]:
        """The deployments this automation's run-deployment actions name literally (not templates)."""
        actions = list(self.actions)
        if isinstance(self.trigger, CompoundTrigger | SequenceTrigger):
            actions += list(self.trigger.on_expire)
        return [
            a.deployment for a in actions
            if isinstance(a, RunDeploymentAction) and "{" not in a.deployment
        ]


class AutomationsFile(_Model):
    """A YAML file of automations: ``automations: [...]``."""

    automations: list[Automation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> AutomationsFile:
        names = [a.name for a in self.automations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"automation names must be unique in a file; repeated: {', '.join(dupes)}")
        return self


_JoinTriggerBase.model_rebuild()
CompoundTrigger.model_rebuild()
SequenceTrigger.model_rebuild()

