"""Plain command parameters converted without loading Pydantic.

Typer converts each parameter of the command being run through a Pydantic TypeAdapter
built on first use, even a parameter left at its default (`--env-file` on every
command). Importing Pydantic for that costs about as much as printing a help screen,
which read commands used in shell loops (`crew runs show`, `crew events tail`) cannot
afford. crew's parameters are plain: strings, integers, paths, flags. Here the usual
values take a short path that gives what Typer's conversion would (a missing value stays
None, a string stays a string, an integer default or decimal digits make an int); every
other value (an invalid integer, a path, a list, a choice) goes to Typer's own
conversion, so its checks and messages are unchanged. A Typer without this hook is left alone.
"""

from __future__ import annotations

from typing import Any

_MAX_DIGITS = 18
"""Longer digit strings go to Typer (Python refuses to parse very long ones)."""


def install() -> None:
    """Give Typer's parameters the short path; idempotent, a no-op on other Typers."""
    try:
        from typer import _coercion, core
    except ImportError:
        return
    parameter = getattr(core, "_TyperParameter", None)
    base = getattr(_coercion, "RuntimeParam", None)
    build = getattr(_coercion, "build_runtime_param", None)
    original = getattr(parameter, "get_runtime_param", None)
    if parameter is None or base is None or build is None or original is None:
        return
    if getattr(original, "crew_light", False):
        return
    build_full: Any = build

    class LightRuntimeParam(base):  # type: ignore[misc, valid-type]
        """Strings and digit strings directly; anything else through Typer."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            annotation = self.annotation
            info = self.parameter_info
            plain = info.parser is None and getattr(info, "click_type", None) is None
            if plain and annotation is str and isinstance(value, str):
                return value
            if plain and annotation is int and info.min is None and info.max is None:
                if type(value) is int:  # a default
                    return value
                if (
                    isinstance(value, str)
                    and value.isascii()
                    and value.isdigit()
                    and len(value) <= _MAX_DIGITS
                ):
                    return int(value)
            full = build_full(param.type_descriptor)
            param._runtime_param = full
            return full._coerce_value(value, param=param, ctx=ctx)

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            descriptor = self.type_descriptor
            if descriptor.file_annotation is not None:
                return original(self)
            self._runtime_param = LightRuntimeParam(
                annotation=descriptor.annotation, parameter_info=descriptor.parameter_info
            )
        return self._runtime_param

    get_runtime_param.crew_light = True  # type: ignore[attr-defined]
    parameter.get_runtime_param = get_runtime_param
