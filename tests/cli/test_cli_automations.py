"""`flowrelay automation ...`, `flowrelay graph`, `flowrelay events replay` in process, in
embedded mode (each test has its own FLOWRELAY_HOME, so its own SQLite database)."""

from __future__ import annotations

import json
from typing import Any

import pytest

FLOWS = """
    from engine import flow

    @flow(name="upstream")
    def upstream(batch_id: str = "b-0") -> dict:
        return {"batch_id": batch_id}

    @flow(name="downstream")
    def downstream(upstream_batch_id: str) -> str:
        return upstream_batch_id
"""

RULES = """
    automations:
      - name: downstream-after-upstream
        description: the reference docs' rule
        trigger:
          type: flow-run-state-change
          match: {flow: upstream}
          expect: [Completed]
        actions:
          - type: run-deployment
            deployment: downstream/main
            parameters:
              upstream_batch_id: "{{ event.payload.result.batch_id }}"
"""


@pytest.fixture
def deployed(cli: Any, write: Any) -> None:
    write("flows.py", FLOWS)
    for flow in ("upstream", "downstream"):
        assert cli("deploy", f"flows.py:{flow}", "--name", "main", "--pool", "default").code == 0


def test_validate_apply_ls_inspect_pause_resume_delete(cli: Any, write: Any, deployed: None) -> None:
    path = write("rules.yaml", RULES)
    assert cli("automation", "validate", str(path)).out.startswith("OK: 1 automation(s) valid")
    applied = cli("automation", "apply", str(path), "--json")
    assert json.loads(applied.out) == ["downstream-after-upstream"]

    listing = cli("automation", "ls")
    assert "downstream-after-upstream" in listing.out and "on Completed of flow=upstream" in listing.out
    [row] = json.loads(cli("automation", "ls", "--json").out)
    assert row["enabled"] is True and row["counters"]["fired"] == 0

    shown = cli("automation", "inspect", "downstream-after-upstream")
    assert "flow-run-state-change" in shown.out and "pending: none" in shown.out

    assert cli("automation", "pause", "downstream-after-upstream").code == 0
    assert json.loads(cli("automation", "ls", "--json").out)[0]["enabled"] is False
    assert cli("automation", "resume", "downstream-after-upstream").code == 0
    assert json.loads(cli("automation", "ls", "--json").out)[0]["enabled"] is True
    assert cli("automation", "delete", "downstream-after-upstream").code == 0
    assert json.loads(cli("automation", "ls", "--json").out) == []


def test_invalid_files_exit_1_with_every_error(cli: Any, write: Any, deployed: None) -> None:
    bad = write("bad.yaml", """
        automations:
          - name: typo
            trigger: {type: flow-run-state-change, expect: [Complted]}
            actions: [{type: run-deployment, deployment: downsteam/main}]
    """)
    result = cli("automation", "validate", str(bad))
    assert result.code == 1
    assert f"{bad}:3:" in result.err and "did you mean 'Completed'" in result.err
    assert "did you mean 'downstream/main'" in result.err
    applied = cli("automation", "apply", str(bad))
    assert applied.code == 1 and "nothing was applied" in applied.err
    assert json.loads(cli("automation", "ls", "--json").out) == []


def test_unknown_names_and_missing_files_are_one_line_errors(cli: Any, deployed: None) -> None:
    for args in (("automation", "inspect", "nope"), ("automation", "pause", "nope"),
                 ("automation", "apply", "missing.yaml"), ("graph", "--format", "png")):
        result = cli(*args)
        assert result.code == 2, args
        assert result.err.startswith("Error: ") and len(result.err.strip().splitlines()) == 1, result.err


def test_backtest_prints_what_would_fire_without_side_effects(cli: Any, write: Any, deployed: None) -> None:
    rules = write("rules.yaml", RULES)
    events = write("events.jsonl", "\n".join(json.dumps(e) for e in [
        {"event": "flow-run.Completed", "occurred": "2026-11-23T09:00:00Z",
         "resource": {"id": "flow-run/1", "flow": "upstream"}, "payload": {"result": {"batch_id": "b-1"}}},
        {"event": "flow-run.Completed", "occurred": "2026-11-23T09:01:00Z",
         "resource": {"id": "flow-run/2", "flow": "other"}, "payload": {"result": {"batch_id": "b-2"}}},
        {"event": "flow-run.Failed", "occurred": "2026-11-23T09:02:00Z",
         "resource": {"id": "flow-run/3", "flow": "upstream"}, "payload": {}},
    ]))
    result = cli("automation", "test", str(rules), "--events", str(events), "--json")
    [firing] = json.loads(result.out)
    assert firing["automation"] == "downstream-after-upstream"
    assert firing["at"].startswith("2026-11-23T09:00:00")
    assert firing["actions"] == [{"type": "run-deployment", "deployment": "downstream/main",
                                  "parameters": {"upstream_batch_id": "b-1"}, "tags": []}]
    assert "3 event(s), 1 firing(s)" in cli("automation", "test", str(rules), "--events", str(events)).out
    assert json.loads(cli("flow-run", "ls", "--json").out) == []  # nothing was launched

    bad = write("bad.jsonl", '{"event": "x"}\n{"occurred": "yesterday"}\n')
    result = cli("automation", "test", str(rules), "--events", str(bad))
    assert result.code == 2 and f"{bad}:2:" in result.err


def test_graph_draws_deployments_and_automations(cli: Any, write: Any, deployed: None) -> None:
    cli("automation", "apply", str(write("rules.yaml", RULES)))
    text = cli("graph").out
    assert "upstream/main --[on Completed of flow=upstream]--> downstream/main   (downstream-after-upstream)" in text
    mermaid = cli("graph", "--format", "mermaid").out
    assert mermaid.startswith("flowchart LR") and '|"on Completed of flow=upstream"|' in mermaid
    dot = cli("graph", "--format", "dot").out
    assert '"upstream/main" -> "downstream/main"' in dot
    graph = json.loads(cli("graph", "--json").out)
    assert graph["edges"][0]["automation"] == "downstream-after-upstream"


def test_run_upstream_fires_and_explain_and_replay(cli: Any, write: Any, deployed: None) -> None:
    cli("automation", "apply", str(write("rules.yaml", RULES)))
    run = json.loads(cli("run", "flows.py:upstream", "--param", "batch_id=b-5", "--json").out)
    assert run["state"] == "Completed"
    from engine.runtime import embedded

    events = embedded.call_sync(lambda api: api.read_events(limit=1000))
    completed = next(e for e in events if e.event == "flow-run.Completed")
    explained = cli("automation", "explain", "downstream-after-upstream", "--event", str(completed.id))
    assert explained.code == 0 and explained.out.strip()
    replayed = json.loads(cli("events", "replay", "--since", "2000-01-01T00:00:00Z", "--json").out)
    assert replayed["events"] >= 1


def test_backtest_over_stored_events(cli: Any, write: Any, deployed: None) -> None:
    assert cli("run", "flows.py:upstream", "--param", "batch_id=b-8").code == 0  # no rule yet
    rules = write("rules.yaml", RULES)
    result = cli("automation", "test", str(rules), "--since", "2000-01-01T00:00:00Z", "--json")
    firings = [f for f in json.loads(result.out) if f["kind"] == "fired"]
    assert [f["actions"][0]["parameters"] for f in firings] == [{"upstream_batch_id": "b-8"}]
    assert cli("automation", "test", str(rules)).code == 2  # neither --events nor --since
