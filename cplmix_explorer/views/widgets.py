"""App widgets from the options' declarations (``config.py``): the same options objects that give the CLI its
flags and the API its keywords give the app its fields, with the same types, defaults and docs."""

from __future__ import annotations

import panel as pn
import param

from ..config import OptionSet


def option_widget(options: OptionSet, name: str, *, bounded: bool = False, widget: type | None = None,
                  **params) -> pn.widgets.Widget:
    """A widget for option ``name`` of ``options``, showing its current value: a checkbox, a select, an integer,
    a number or a text field by the option's declared type, described by its doc. ``bounded``: the declared
    bounds become the widget's start and end (otherwise the options' own validation decides, with its message).
    ``widget`` (a widget class) and ``params`` (label, layout, a slider's range) override the defaults."""
    parameter = options.param[name]
    value = getattr(options, name)
    if widget is None:
        if isinstance(parameter, param.Boolean):
            widget = pn.widgets.Checkbox
            value = bool(value)
        elif isinstance(parameter, param.Selector):
            widget = pn.widgets.Select
            params.setdefault("options", list(parameter.objects))
        elif isinstance(parameter, param.Integer):
            widget = pn.widgets.IntInput
        elif isinstance(parameter, param.Number):
            widget = pn.widgets.FloatInput
            params.setdefault("format", "0.[000000]")
        else:
            widget = pn.widgets.TextInput
            value = value or ""
    if bounded and isinstance(parameter, param.Number) and parameter.bounds is not None:
        low, high = parameter.bounds
        if low is not None:
            params.setdefault("start", low)
        if high is not None:
            params.setdefault("end", high)
    if "description" in widget.param:
        params.setdefault("description", parameter.doc)
    else:
        params.pop("description", None)
    return widget(value=value, **params)
