"""Kubernetes structural schemas from pydantic models, and defaulting as the API server does it.

pydantic writes JSON Schema 2020-12; a CRD wants OpenAPI v3.0 in Kubernetes' structural form: no
`$ref`, no `anyOf` for an optional field, no titles, `exclusiveMinimum` as a flag beside
`minimum`, and `x-kubernetes-preserve-unknown-fields` where a model keeps unknown keys (pydantic's
`additionalProperties: true`). Kubernetes keywords (formats, `x-kubernetes-*`) come from the
models' `json_schema_extra`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

Schema = dict[str, Any]

FIRST = ("type", "format", "description", "default", "required")
LAST = ("properties", "additionalProperties", "items")


def structural(model: type[BaseModel]) -> Schema:
    """The model's schema as a CRD's openAPIV3Schema takes it."""
    raw = model.model_json_schema(by_alias=True, ref_template="{model}")
    definitions = raw.pop("$defs", {})
    return _convert(raw, definitions)


def _convert(node: Mapping[str, Any], definitions: Mapping[str, Schema]) -> Schema:
    out = dict(node)
    while "$ref" in out or "anyOf" in out:
        # The field's own keywords (its description) win over the model's (its docstring).
        if "$ref" in out:
            out = {**definitions[out.pop("$ref")], **out}
        else:
            (chosen,) = [o for o in out.pop("anyOf") if o.get("type") != "null"]  # X | None: X
            out = {**chosen, **out}
    out.pop("title", None)
    if out.get("default", ...) is None:
        del out["default"]
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(flag), int | float) and not isinstance(out[flag], bool):
            out[bound], out[flag] = out[flag], True
    extra = out.pop("additionalProperties", None)
    if extra is True:
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, Mapping):
        out["additionalProperties"] = _convert(extra, definitions)
    if "properties" in out:
        out["properties"] = {k: _convert(v, definitions) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = _convert(out["items"], definitions)
    return _ordered(out)


def _ordered(node: Schema) -> Schema:
    """Type and description first, nested schemas last: the generated YAML reads top-down."""
    head = [k for k in FIRST if k in node]
    tail = [k for k in LAST if k in node]
    middle = [k for k in node if k not in head and k not in tail]
    return {k: node[k] for k in (*head, *middle, *tail)}


def with_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """`value` with the schema's defaults filled in wherever a field is missing, at any depth, as
    the API server defaults a custom resource (a default is itself defaulted further)."""
    if isinstance(value, Mapping) and "properties" in schema:
        out = dict(value)
        for name, prop in schema["properties"].items():
            if name not in out and "default" in prop:
                out[name] = copy.deepcopy(prop["default"])
            if name in out:
                out[name] = with_defaults(prop, out[name])
        return out
    if isinstance(value, list) and "items" in schema:
        return [with_defaults(schema["items"], item) for item in value]
    return value
