"""Record a callback's constructor arguments, so they can be logged as the run's configuration.

Our callbacks take plain typed values (ints, floats, strings, lists, dicts) so that LightningCLI
can build them from YAML; the same values, bound to the constructor's signature with its defaults,
are what W&B shows in ``run.config`` (and TensorBoard/CSV beside the run). Subclasses need not do
anything: the arguments are captured in ``__new__``, before any ``__init__`` runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

__all__ = ["RecordsSettings", "plain_value"]


def plain_value(value: Any) -> Any:
    """``value`` as JSON-friendly data: tuples become lists, unknown objects their ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): plain_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain_value(item) for item in value]
    return repr(value)


class RecordsSettings:
    """Mixin: :meth:`settings` returns the constructor arguments, defaults filled in."""

    _init_arguments: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__new__(cls)
        instance._init_arguments = (args, dict(kwargs))
        return instance

    def settings(self) -> dict[str, Any]:
        """``{argument: value}`` of the constructor call, with defaults, as plain data."""
        args, kwargs = self._init_arguments
        signature = inspect.signature(type(self).__init__)
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:  # unpickled or copied instances were built without arguments
            return {}
        bound.apply_defaults()
        out: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                out.update({key: plain_value(item) for key, item in value.items()})
            elif kind is not inspect.Parameter.VAR_POSITIONAL:
                out[name] = plain_value(value)
        return out
