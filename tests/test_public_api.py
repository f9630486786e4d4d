"""Every exported name imports, and the states module has the documented constructors."""

import engine
import engine.states as states


def test_every_exported_name_imports():
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name


def test_state_constructors():
    for ctor in ("Completed", "Failed", "Cancelled", "Pending", "Running", "Scheduled"):
        state = getattr(states, ctor)(message="m")
        assert state.name == ctor and state.message == "m"
    assert states.Completed(message="ok").is_final()
    assert not states.Running().is_final()
    assert repr(states.Completed()) == "Completed()"
    assert repr(states.AwaitingRetry(message="x")) == "AwaitingRetry(message='x', type=SCHEDULED)"


def test_automations_api_imports():
    import automations

    for name in automations.__all__:
        assert getattr(automations, name) is not None, name
