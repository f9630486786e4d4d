"""The YAML loader: good files load, bad ones are refused whole with every error placed."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from automations.errors import AutomationFileError
from automations.loader import (
    check_loops,
    load_file,
    load_paths,
    parse_automations,
    parse_documents,
)
from automations.models import Automation, FlowRunStateChangeTrigger, RunDeploymentAction

KNOWN = {"upstream/nightly": "upstream", "downstream/processing": "downstream", "a/x": "a", "b/y": "b"}

GOOD = """\
automations:
  - name: downstream-after-upstream
    trigger:
      type: flow-run-state-change
      match: {deployment: upstream/nightly}
      expect: [Completed]
    actions:
      - type: run-deployment
        deployment: downstream/processing
        parameters:
          upstream_batch_id: "{{ event.payload.result.batch_id }}"

  - name: alert-on-failure
    trigger:
      type: event
      expect: [flow-run.Failed]
      match: {flow: upstream}
    actions:
      - type: call-webhook
        url: https://hooks.example.com/alert
"""


def problems(text: str, **kwargs) -> list[str]:
    with pytest.raises(AutomationFileError) as info:
        parse_automations(textwrap.dedent(text), source="rules/etl.yaml", **kwargs)
    return info.value.problems


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- good files --------------------------------------------------------------------------------


def test_a_good_file_loads_with_where_each_automation_starts(tmp_path: Path) -> None:
    path = write(tmp_path, "etl.yaml", GOOD)

    loaded = load_file(path, known_deployments=KNOWN)

    assert [item.automation.name for item in loaded] == ["downstream-after-upstream", "alert-on-failure"]
    assert [item.source for item in loaded] == [f"{path}:2", f"{path}:13"]
    first = loaded[0].automation
    assert isinstance(first.trigger, FlowRunStateChangeTrigger)
    assert first.trigger.expect == ["Completed"]
    assert isinstance(first.actions[0], RunDeploymentAction)
    assert first.actions[0].parameters == {"upstream_batch_id": "{{ event.payload.result.batch_id }}"}


@pytest.mark.parametrize("text", ["", "# only a comment\n", "automations:\n", "automations: []\n", "~\n"])
def test_an_empty_file_holds_no_automations(text: str) -> None:
    assert parse_automations(text) == []


def test_anchors_and_merge_keys_are_plain_yaml() -> None:
    text = """\
    automations:
      - name: one
        trigger: &on-upstream {type: flow-run-state-change, match: {deployment: upstream/nightly}}
        actions: [&run {type: run-deployment, deployment: downstream/processing}]
      - name: two
        trigger: {<<: *on-upstream, expect: [Failed]}
        actions: [*run]
    """
    loaded = parse_automations(textwrap.dedent(text), known_deployments=KNOWN)
    assert [item.automation.name for item in loaded] == ["one", "two"]


# --- every error with its place ------------------------------------------------------------------


def test_a_misspelt_state_says_where_and_what_was_meant() -> None:
    assert problems(
        """\
        automations:
          - name: etl
            trigger:
              type: flow-run-state-change
              match: {deployment: upstream/nightly}
              expect: [Running, Complted]
            actions: [{type: run-deployment, deployment: downstream/processing}]
        """
    ) == [
        "rules/etl.yaml:6:25: automations[0].trigger.expect[1]: 'Complted' is not a state (did you mean 'Completed'?)"
    ]


def test_a_file_with_three_errors_reports_all_three_in_order() -> None:
    assert problems(
        """\
        automations:
          - name: etl
            trigger:
              type: flow-run-state-change
              expct: [Completed]
            actions:
              - type: run-deploymnt
                deployment: downstream/processing
          - name: other
            trigger: {type: event, posture: proactiv, within: 10m}
            actions: [{type: emit-event, event: x}]
        """
    ) == [
        "rules/etl.yaml:5:7: automations[0].trigger.expct: unknown field 'expct' (did you mean 'expect'?)",
        "rules/etl.yaml:7:15: automations[0].actions[0].type: unknown action type 'run-deploymnt' (did you mean 'run-deployment'?)",
        "rules/etl.yaml:10:37: automations[1].trigger.posture: Input should be 'reactive' or 'proactive' (got 'proactiv'; did you mean 'proactive'?)",
    ]


def test_an_unknown_deployment_is_named_with_the_closest_known_one() -> None:
    assert problems(
        """\
        automations:
          - name: etl
            trigger: {type: event, expect: [batch.ready]}
            actions:
              - type: run-deployment
                deployment: downsteam/processing
              - type: pause-deployment
                deployment: nothing/like-it
        """,
        known_deployments=KNOWN,
    ) == [
        "rules/etl.yaml:6:21: automations[0].actions[0].deployment: deployment 'downsteam/processing' does not exist (did you mean 'downstream/processing'?); deploy it first with flowrelay deploy",
        "rules/etl.yaml:8:21: automations[0].actions[1].deployment: deployment 'nothing/like-it' does not exist; deploy it first with flowrelay deploy",
    ]


def test_deployments_in_on_expire_are_checked_and_templates_are_not() -> None:
    assert problems(
        """\
        automations:
          - name: join
            trigger:
              type: compound
              triggers:
                - {type: flow-run-state-change, match: {deployment: a/x}, expect: [Completed]}
                - {type: flow-run-state-change, match: {deployment: b/y}, expect: [Completed]}
              on_expire:
                - {type: run-deployment, deployment: cleanup/now}
            actions:
              - {type: run-deployment, deployment: "{{ event.payload.target }}"}
              - {type: run-deployment, deployment: no-slash}
        """,
        known_deployments=KNOWN,
    ) == [
        "rules/etl.yaml:9:46: automations[0].trigger.on_expire[0].deployment: deployment 'cleanup/now' does not exist; deploy it first with flowrelay deploy",
        "rules/etl.yaml:12:44: automations[0].actions[1].deployment: deployment 'no-slash' must be written FLOW/NAME (e.g. 'etl/nightly')",
    ]


def test_an_unknown_trigger_type_and_a_missing_field() -> None:
    assert problems(
        """\
        automations:
          - name: a
            trigger: {type: flow-run-state-chnge}
            actions: [{type: emit-event, event: x}]
          - name: b
            trigger: {type: event, expect: [go]}
        """
    ) == [
        "rules/etl.yaml:3:21: automations[0].trigger.type: unknown trigger type 'flow-run-state-chnge' (did you mean 'flow-run-state-change'?)",
        "rules/etl.yaml:5:5: automations[1]: missing required field 'actions'",
    ]


def test_errors_inside_compound_children_have_the_users_path() -> None:
    assert problems(
        """\
        automations:
          - name: join
            trigger:
              type: compound
              triggers:
                - type: flow-run-state-change
                  match: {deployment: a/x}
                - type: flow-run-state-change
                  match: {deployment: b/y}
                  expect: [Faild]
                - type: sequence
            actions: []
        """
    ) == [
        "rules/etl.yaml:10:20: automations[0].trigger.triggers[1].expect[0]: 'Faild' is not a state (did you mean 'Failed'?)",
        "rules/etl.yaml:11:17: automations[0].trigger.triggers[2].type: a sequence trigger cannot be a child trigger; children are event or flow-run-state-change triggers",
        "rules/etl.yaml:12:14: automations[0].actions: needs at least 1 item, got 0",
    ]


def test_an_unknown_field_without_a_close_one_lists_the_fields() -> None:
    [problem] = problems(
        """\
        automations:
          - name: a
            trigger: {type: event, expect: [go]}
            actions: [{type: pause-automation, zzz: 1}]
        """
    )
    assert problem == (
        "rules/etl.yaml:4:40: automations[0].actions[0].zzz: unknown field 'zzz'; "
        "the fields are type, automation"
    )


def test_wrong_shapes_say_what_was_expected() -> None:
    assert problems(
        """\
        automations:
          - name: a
            trigger: {type: flow-run-state-change, expect: Completed, match: {flow: {x: 1}}}
            actions: [{type: emit-event, event: x}, 3]
        """
    ) == [
        "rules/etl.yaml:3:52: automations[0].trigger.expect: expected a list, got a string; write [Completed]",
        "rules/etl.yaml:3:77: automations[0].trigger.match.flow: expected a string, an integer, a number, a boolean or a list (got a mapping)",
        "rules/etl.yaml:4:45: automations[0].actions[1]: expected a mapping, got a number",
    ]


def test_a_bad_name_says_what_a_name_may_hold() -> None:
    assert problems(
        """\
        automations:
          - name: "-etl"
            trigger: {type: event, expect: [go]}
            actions: [{type: emit-event, event: x}]
        """
    ) == [
        "rules/etl.yaml:2:11: automations[0].name: a name starts with a letter or digit and holds letters, digits, spaces and '_', '.', '-' (got '-etl')"
    ]


def test_template_syntax_errors_are_placed_on_their_line() -> None:
    assert problems(
        """\
        automations:
          - name: join
            trigger:
              type: compound
              correlate: "{{ event.payload.parameters.batch_id }"
              triggers:
                - {type: event, expect: [b.done]}
            actions:
              - type: run-deployment
                deployment: a/x
                parameters:
                  batch: "{{ event.payload.result.batch_id"
                  ok: "{{ event.payload.result.n + 1 }}"
                  nested: ["{{ x | nosuchfilter }}"]
        """
    ) == [
        "rules/etl.yaml:5:18: automations[0].trigger.correlate: '{{ event.payload.parameters.batch_id }' is not a valid template: unexpected '}'",
        "rules/etl.yaml:12:18: automations[0].actions[0].parameters.batch: '{{ event.payload.result.batch_id' is not a valid template: unexpected end of template, expected 'end of print statement'.",
        "rules/etl.yaml:14:20: automations[0].actions[0].parameters.nested[0]: '{{ x | nosuchfilter }}' is not a valid template: No filter named 'nosuchfilter'.",
    ]


def test_names_are_unique_within_a_file() -> None:
    assert problems(
        """\
        automations:
          - name: same
            trigger: {type: event, expect: [go]}
            actions: [{type: emit-event, event: x}]
          - name: same
            trigger: {type: event, expect: [go]}
            actions: [{type: emit-event, event: y}]
        """
    ) == ["rules/etl.yaml:5:11: automations[1].name: 'same' is already defined at line 2 (automation names must be unique)"]


# --- YAML itself ---------------------------------------------------------------------------------


def test_python_tags_are_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"""\
    automations:
      - name: x
        trigger: !!python/object/apply:os.system ["touch {marker}"]
        actions: [{{type: emit-event, event: x}}]
    """
    assert problems(text) == [
        "rules/etl.yaml:3:14: automations[0].trigger: tag '!!python/object/apply:os.system' is not "
        "allowed: automation files hold plain data (mappings, lists, text, numbers), never Python objects"
    ]
    assert not marker.exists()


def test_duplicate_keys_are_errors() -> None:
    assert problems(
        """\
        automations:
          - name: x
            trigger: {type: event, match: {flow: a, flow: b}}
            actions: [{type: emit-event, event: x}]
            actions: [{type: emit-event, event: y}]
        """
    ) == [
        "rules/etl.yaml:3:45: automations[0].trigger.match.flow: duplicate key 'flow' (first on line 3); a key may appear once in a mapping",
        "rules/etl.yaml:5:5: automations[0].actions: duplicate key 'actions' (first on line 4); a key may appear once in a mapping",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "automations:\n  - name: x\n    trigger: {type: event\n    actions: []\n",
            "rules/etl.yaml:4:12: invalid YAML: did not find expected ',' or '}' (while parsing a flow mapping on line 3)",
        ),
        ("automations:\n\t- name: x\n", "rules/etl.yaml:2:1: invalid YAML: a tab character; indent with spaces"),
        (
            "automations: []\n---\nautomations: []\n",
            "rules/etl.yaml:2:1: invalid YAML: a file holds one YAML document; remove the `---` separator (or split the file)",
        ),
    ],
)
def test_yaml_syntax_errors_have_line_and_column(text: str, expected: str) -> None:
    assert problems(text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "- name: x\n  trigger: {type: event, expect: [go]}\n",
            "rules/etl.yaml:1:1: expected a mapping with an `automations:` list at the top level, got a list; write `automations:` on the first line and indent this list under it",
        ),
        (
            "name: x\ntrigger: {type: event, expect: [go]}\nactions: []\n",
            "rules/etl.yaml:1:1: expected `automations:` at the top level; this looks like a single automation: make it an item of the list (`automations:` on the first line, then `  - name: ...` with the rest indented under it)",
        ),
        ("automation: []\n", "rules/etl.yaml:1:1: automation: unknown field 'automation' (did you mean 'automations'?)"),
        ("automations: {name: x}\n", "rules/etl.yaml:1:14: automations: expected a list of automations, got a mapping"),
        ("just text\n", "rules/etl.yaml:1:1: expected a mapping with an `automations:` list at the top level, got a string"),
    ],
)
def test_the_top_level_must_be_automations_with_a_hint(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_alias_bombs_and_self_references_are_refused_quickly() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    started = time.process_time()  # this process's CPU: a busy machine does not count
    assert problems("\n".join(levels) + "\n") == [
        "rules/etl.yaml:1:1: the document expands (through aliases) to more than 1,000,000 values"
    ]
    assert problems("automations: &a [*a]\n") == [
        "rules/etl.yaml:1:14: an alias that contains itself is not allowed"
    ]
    assert time.process_time() - started < 1


# --- several files -------------------------------------------------------------------------------


def test_a_folder_loads_its_yaml_files_in_name_order(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", "c.yaml"):
        write(tmp_path / "rules", name, f"automations:\n  - {{name: {name[0]}, trigger: {{type: event, expect: [go]}}, actions: [{{type: emit-event, event: x}}]}}\n")
    write(tmp_path / "rules", "notes.txt", "not yaml: [")
    write(tmp_path / "rules" / "sub", "d.yaml", "not: loaded\n")
    extra = write(tmp_path, "extra.yaml", "automations:\n  - {name: e, trigger: {type: event, expect: [go]}, actions: [{type: emit-event, event: x}]}\n")

    loaded = load_paths([extra, tmp_path / "rules", tmp_path / "rules" / "a.yml"])

    assert [item.automation.name for item in loaded] == ["e", "a", "b", "c"]
    assert loaded[1].source == f"{tmp_path / 'rules' / 'a.yml'}:2"


def test_one_bad_file_refuses_them_all(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    bad = write(tmp_path, "b.yaml", "automations:\n  - name: x\n    trigger: {type: event, expect: [y]}\n    actions: [{type: emit-evnt}]\n")
    write(tmp_path, "c.yaml", GOOD.replace("name: ", "name: c-"))

    with pytest.raises(AutomationFileError) as info:
        load_paths([tmp_path], known_deployments=KNOWN)

    assert info.value.problems == [
        f"{bad}:4:22: automations[0].actions[0].type: unknown action type 'emit-evnt' (did you mean 'emit-event'?)"
    ]


def test_a_name_defined_in_two_files_names_both_places(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", GOOD)
    second = write(tmp_path, "b.yaml", "automations:\n  - name: keep\n    trigger: {type: event, expect: [go]}\n    actions: [{type: emit-event, event: x}]\n  - name: alert-on-failure\n    trigger: {type: event, expect: [go]}\n    actions: [{type: emit-event, event: x}]\n")

    with pytest.raises(AutomationFileError) as info:
        load_paths([first, second], known_deployments=KNOWN)

    assert info.value.problems == [
        f"{second}:5:11: automations[1].name: 'alert-on-failure' is already defined at {first}:13 (automation names must be unique across files)"
    ]


def test_problems_of_every_file_are_reported(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "automations: {}\n")
    missing = tmp_path / "missing.yaml"
    b = write(tmp_path, "b.yaml", "- x\n")

    with pytest.raises(AutomationFileError) as info:
        load_paths([a, missing, b])

    assert info.value.problems == [
        f"{missing}: no such file or folder",
        f"{a}:1:14: automations: expected a list of automations, got a mapping",
        f"{b}:1:1: expected a mapping with an `automations:` list at the top level, got a list; write `automations:` on the first line and indent this list under it",
    ]


def test_parse_documents_checks_names_across_texts() -> None:
    one = "automations:\n  - {name: x, trigger: {type: event, expect: [go]}, actions: [{type: emit-event, event: x}]}\n"
    with pytest.raises(AutomationFileError) as info:
        parse_documents([("one.yaml", one), ("two.yaml", "\n" + one)])
    assert info.value.problems == [
        "two.yaml:3:12: automations[0].name: 'x' is already defined at one.yaml:2 (automation names must be unique across files)"
    ]


# --- the loop guard ------------------------------------------------------------------------------


def automation(trigger: dict, *actions: dict, **extra) -> Automation:
    return Automation.model_validate({"name": "t", "trigger": trigger, "actions": list(actions), **extra})


RUN_AX = {"type": "run-deployment", "deployment": "a/x"}
STATE = {"type": "flow-run-state-change"}


@pytest.mark.parametrize(
    ("trigger", "action"),
    [
        ({**STATE, "match": {"deployment": "a/x"}}, RUN_AX),
        ({**STATE, "match": {"flow": "a"}}, RUN_AX),
        ({**STATE, "match": {"flow": "*"}}, RUN_AX),
        ({**STATE, "match": {"deployment": "a/*"}, "expect": ["Failed"]}, RUN_AX),
        ({**STATE, "match": {"deployment": ["b/y", "a/x"]}}, RUN_AX),
        ({**STATE, "match": {"deployment": "!b/y"}}, RUN_AX),
        (STATE, RUN_AX),
        ({**STATE, "threshold": 3, "within": "10m"}, RUN_AX),
        ({"type": "event", "expect": ["flow-run.Completed"], "match": {"flow": "a"}}, RUN_AX),
        ({"type": "event"}, RUN_AX),
        ({**STATE, "match": {"tags": "retry"}}, {**RUN_AX, "tags": ["retry"]}),
        ({**STATE, "match": {"flow": "a"}}, {"type": "run-deployment", "deployment": "{{ event.resource.deployment }}"}),
        ({"type": "event", "expect": ["batch.ready"]}, {"type": "emit-event", "event": "batch.ready"}),
    ],
)
def test_loops_are_refused(trigger: dict, action: dict) -> None:
    explanation = check_loops(automation(trigger, action))
    assert explanation is not None
    assert "can trigger itself" in explanation
    assert "allow_loops: true" in explanation and "narrow `match`" in explanation


@pytest.mark.parametrize(
    ("trigger", "action"),
    [
        ({**STATE, "match": {"deployment": "a/x"}}, {"type": "run-deployment", "deployment": "b/y"}),
        ({**STATE, "match": {"flow": "b"}}, RUN_AX),
        ({**STATE, "match": {"deployment": "!a/x"}}, RUN_AX),
        ({**STATE, "match": {"deployment": "a/x", "tags": "nightly"}}, RUN_AX),
        ({**STATE, "match": {"tags": "!manual"}}, RUN_AX),
        ({**STATE, "match": {"deployment": "a/x", "work_pool": "*"}}, RUN_AX),
        ({**STATE, "match": {"deployment": "a/x"}, "match_related": {"role": "parent"}}, RUN_AX),
        ({**STATE, "match": {"deployment": "a/x"}, "after": ["Running"]}, RUN_AX),
        ({**STATE, "match": {"deployment": "a/x"}, "posture": "proactive", "within": "30m"}, RUN_AX),
        ({"type": "event", "expect": ["batch.ready"]}, RUN_AX),
        ({"type": "event", "expect": ["task-run.*"]}, RUN_AX),
        ({**STATE, "match": {"flow": "a"}}, {"type": "run-deployment", "deployment": "{{ event.payload.next }}"}),
        ({**STATE}, {"type": "pause-deployment", "deployment": "a/x"}),
        ({"type": "event", "expect": ["batch.ready"]}, {"type": "emit-event", "event": "batch.done"}),
        ({"type": "event", "expect": ["batch.ready"], "match": {"id": "batch/1"}}, {"type": "emit-event", "event": "batch.ready", "resource": {"id": "batch/2"}}),
    ],
)
def test_narrowed_triggers_are_not_loops(trigger: dict, action: dict) -> None:
    assert check_loops(automation(trigger, action)) is None


def test_allow_loops_accepts_a_loop() -> None:
    assert check_loops(automation({**STATE, "match": {"deployment": "a/x"}}, RUN_AX, allow_loops=True)) is None


def test_the_loop_guard_uses_the_flow_each_deployment_runs() -> None:
    looping = automation({**STATE, "match": {"flow": "etl"}}, {"type": "run-deployment", "deployment": "nightly/x"})
    assert check_loops(looping) is None
    assert check_loops(looping, deployment_flows={"nightly/x": "etl"}) is not None


def test_joins_loop_when_the_launched_run_completes_them_or_reopens_them() -> None:
    child_a = {**STATE, "match": {"deployment": "a/x"}, "expect": ["Completed"]}
    child_b = {**STATE, "match": {"deployment": "b/y"}, "expect": ["Completed"]}
    join = {"type": "compound", "triggers": [child_a, child_b]}
    assert check_loops(automation(join, RUN_AX)) is None  # needs b/y as well
    assert check_loops(automation({**join, "require": "any"}, RUN_AX)) is not None
    retry_a = {**join, "on_expire": [RUN_AX]}
    assert check_loops(automation(retry_a, {"type": "emit-event", "event": "joined"})) is not None


def test_a_loop_is_refused_at_load_with_its_place() -> None:
    text = """\
    automations:
      - name: again
        trigger:
          type: flow-run-state-change
          match: {deployment: a/x}
          expect: [Failed]
        actions:
          - type: run-deployment
            deployment: a/x
      - name: fine
        trigger: {type: flow-run-state-change, match: {deployment: a/x}}
        actions: [{type: run-deployment, deployment: a/x}]
        allow_loops: true
    """
    assert problems(text, known_deployments=KNOWN) == [
        "rules/etl.yaml:8:9: automations[0].actions[0]: automation 'again' can trigger itself: its "
        "action run-deployment 'a/x' (a run of flow 'a') produces events that the trigger listens "
        "to (flow-run.Failed; match: deployment: 'a/x'), so each firing can cause the next; narrow "
        "`match` so these events do not match (e.g. on `deployment` or `tags`), or set "
        "`allow_loops: true` if the loop is intended"
    ]


# --- speed ---------------------------------------------------------------------------------------


def test_a_thousand_automations_load_well_under_a_second() -> None:
    parts = ["automations:"]
    for i in range(1000):
        parts.append(
            f"""\
  - name: auto-{i}
    trigger:
      type: flow-run-state-change
      match: {{deployment: up{i}/x}}
      expect: [Completed, Failed]
    actions:
      - type: run-deployment
        deployment: down{i}/x
        parameters:
          batch: "{{{{ event.payload.result.batch_{i} }}}}"
          n: {i}"""
        )
    text = "\n".join(parts) + "\n"
    known = {f"down{i}/x": f"down{i}" for i in range(1000)}

    timings = []
    for _ in range(2):
        # CPU time of this process, not the wall clock: other processes on a busy machine do not
        # count (a guard against a quadratic loader, not a benchmark)
        started = time.process_time()
        loaded = parse_automations(text, known_deployments=known)
        timings.append(time.process_time() - started)

    assert len(loaded) == 1000
    assert min(timings) < 1.0
