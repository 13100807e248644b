"""A model's input checked against its JSON Schema (draft 2020-12), with the one violation told as
`field: reason`: the words of Studio's 400 `Invalid input: ...` and of the simulator's 422."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match


def field_of(error: ValidationError) -> str:
    """The input field an error is about: its path, or the properties a `required` or an
    `additionalProperties` error names."""
    if error.path:
        return ".".join(str(part) for part in error.path)
    instance = error.instance if isinstance(error.instance, dict) else {}
    if error.validator == "required" and isinstance(error.validator_value, list):
        missing = [str(name) for name in error.validator_value if name not in instance]
        return ", ".join(missing) or "input"
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        return ", ".join(sorted(str(name) for name in instance if name not in known)) or "input"
    return "input"


def problem(validator: Draft202012Validator, instance: Any) -> str | None:
    """`field: reason` for the most relevant violation, or None when `instance` is valid."""
    error = best_match(validator.iter_errors(instance))
    return None if error is None else f"{field_of(error)}: {error.message}"
