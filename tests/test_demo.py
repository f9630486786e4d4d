"""The quick-start demo runs on the embedded default and tells the flow-of-flows story."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_the_flow_of_flows(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRELAY_")}
    env["FLOWRELAY_HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "deployed parent-flow/demo" in proc.stdout
    assert "parent-flow finished Completed: D[B(b-" in proc.stdout
    for name in ("upstream-d", "downstream", "A/demo", "B/demo", "C/demo", "D/demo"):
        assert name in proc.stdout
    # act 2: the same chain launched by automations only, a live table, then the graph
    assert "applied automations: downstream-after-upstream, fan-out-after-A, D-after-B-and-C" in proc.stdout
    assert "chain finished in" in proc.stdout
    graph = proc.stdout.split("flowrelay graph", 1)[1]
    assert "A/demo --[on Completed of deployment=A/demo]--> B/demo" in graph
    assert "B/demo --[all of B/demo, C/demo per payload.parameters.batch_id within 10m]--> D/demo" in graph
    assert "upstream-data-preparation/demo --[on Completed" in graph
