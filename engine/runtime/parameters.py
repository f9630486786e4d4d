"""Flow parameters: bind call arguments to names, validate and coerce them with pydantic."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any, Optional

import pydantic
from pydantic_core import PydanticSerializationError, to_jsonable_python

from engine.errors import ParameterValidationError

MAX_PARAMETERS_BYTES = 1_000_000


def bind(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional and keyword arguments → {name: value}, defaults applied."""
    sig = inspect.signature(fn)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise ParameterValidationError(f"{fn.__name__}(): {exc}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


@functools.lru_cache(maxsize=512)
def _model_for(fn: Callable[..., Any]) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {}
    hints = _type_hints(fn)
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            fields[name] = (tuple[Any, ...], ())
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            fields[name] = (dict[str, Any], {})
        else:
            annotation = hints.get(name, Any)
            default = ... if p.default is inspect.Parameter.empty else p.default
            if default is None:
                # `x: str = None` means "optional" to Prefect users (pydantic v1 read it so): the
                # default None, or an explicit None, is not a validation error.
                annotation = Optional[annotation]  # noqa: UP045 - `X | None` fails on some hints
            fields[name] = (annotation, default)
    return pydantic.create_model(
        f"{fn.__name__}_parameters",
        __config__=pydantic.ConfigDict(arbitrary_types_allowed=True, extra="forbid"),
        **fields,
    )


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        import typing

        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable forward refs: fall back to raw annotations
        return {
            k: (v if not isinstance(v, str) else Any) for k, v in getattr(fn, "__annotations__", {}).items()
        }


def validate(fn: Callable[..., Any], params: dict[str, Any], *, what: str) -> dict[str, Any]:
    """Validate and coerce `params` against `fn`'s type hints; raise with a readable message."""
    model = _model_for(fn)
    try:
        obj = model.model_validate(params)
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(parameters)"
            if err["type"] == "extra_forbidden":
                known = ", ".join(model.model_fields) or "none"
                lines.append(f"{loc}: unknown parameter (the flow takes: {known})")
            else:
                got = err.get("input")
                shown = repr(got)
                if len(shown) > 80:
                    shown = shown[:77] + "..."
                lines.append(f"{loc}: {err['msg']} (got {shown})")
        raise ParameterValidationError(
            f"invalid parameters for {what}: " + "; ".join(lines)
        ) from None
    return {name: getattr(obj, name) for name in model.model_fields}


def call_arguments(fn: Callable[..., Any], params: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """{name: value} → (args, kwargs) that call `fn` the same way."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name not in params:
            continue
        value = params[name]
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            args.extend(value)
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            kwargs.update(value)
        elif p.kind is inspect.Parameter.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[name] = value
    return tuple(args), kwargs


def to_json_parameters(params: dict[str, Any], *, what: str) -> dict[str, Any]:
    """The JSON form stored on the run. Values that JSON cannot hold are stored as their repr."""
    try:
        data = to_jsonable_python(params, fallback=repr)
    except PydanticSerializationError as exc:  # pragma: no cover - fallback=repr catches most
        raise ParameterValidationError(f"parameters of {what} cannot be stored: {exc}") from None
    size = len(json.dumps(data))
    if size > MAX_PARAMETERS_BYTES:
        raise ParameterValidationError(
            f"parameters of {what} are {size:,} bytes as JSON, over the {MAX_PARAMETERS_BYTES:,}-byte "
            "limit: pass a reference (a path, a URL, a key) instead of the data itself"
        )
    return data  # type: ignore[no-any-return]
