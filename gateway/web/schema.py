"""Request bodies: one declaration validates a body and describes it in the OpenAPI document."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class BodyError(Exception):
    """A request body that cannot be used; str() names what was wrong."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _annotated(out: dict[str, Any], description: str, nullable: bool = False
               ) -> dict[str, Any]:
    """A field's OpenAPI schema with what every kind of field may add."""
    if nullable:
        out["nullable"] = True
    if description:
        out["description"] = description
    return out


@dataclass(frozen=True, slots=True)
class Str:
    """A string; `nullable` also accepts JSON null ("the default")."""

    min: int = 1
    max: int = 256
    required: bool = True
    description: str = ""
    enum: tuple[str, ...] = ()
    pattern: str | None = None
    format: str | None = None
    nullable: bool = False

    def check(self, name: str, value: Any) -> None:
        if value is None and self.nullable:
            return
        if not isinstance(value, str):
            raise BodyError(f"{name}: expected a string{' or null' if self.nullable else ''}")
        if self.enum and value not in self.enum:
            raise BodyError(f"{name}: expected one of: {', '.join(self.enum)}")
        if not self.min <= len(value) <= self.max:
            raise BodyError(f"{name}: expected {self.min} to {self.max} characters")

    def openapi(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string", "minLength": self.min, "maxLength": self.max}
        if self.enum:
            out = {"type": "string", "enum": list(self.enum)}
        if self.pattern:
            out["pattern"] = self.pattern
        if self.format:
            out["format"] = self.format
        return _annotated(out, self.description, self.nullable)


@dataclass(frozen=True, slots=True)
class Int:
    """A whole number in [min, max]; `nullable` also accepts JSON null ("the default")."""

    min: int
    max: int
    required: bool = True
    nullable: bool = False
    description: str = ""

    def check(self, name: str, value: Any) -> None:
        if value is None and self.nullable:
            return
        # bool is an int in Python, but true is not a number in JSON
        if isinstance(value, bool) or not isinstance(value, int):
            expected = " or null" if self.nullable else ""
            raise BodyError(f"{name}: expected a whole number{expected}")
        if not self.min <= value <= self.max:
            raise BodyError(f"{name}: expected a whole number from {self.min} to {self.max}")

    def openapi(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer", "minimum": self.min, "maximum": self.max}
        return _annotated(out, self.description, self.nullable)


@dataclass(frozen=True, slots=True)
class Bool:
    """true or false."""

    required: bool = True
    description: str = ""

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, bool):
            raise BodyError(f"{name}: expected true or false")

    def openapi(self) -> dict[str, Any]:
        return _annotated({"type": "boolean"}, self.description)


@dataclass(frozen=True, slots=True)
class Obj:
    """A free-form JSON object (command parameters: checked later against the kind)."""

    required: bool = True
    description: str = ""

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, dict):
            raise BodyError(f"{name}: expected a JSON object")

    def openapi(self) -> dict[str, Any]:
        return _annotated({"type": "object", "additionalProperties": True}, self.description)


@dataclass(frozen=True, slots=True)
class Body:
    fields: dict[str, Str | Int | Bool | Obj] = field(default_factory=dict)

    def parse(self, raw: bytes, content_type: str) -> dict[str, Any]:
        if content_type != "application/json":
            raise BodyError("expected a JSON body (Content-Type: application/json)", 415)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise BodyError(f"body: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise BodyError("body: expected a JSON object")
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise BodyError(f"{unknown[0]}: unknown field (expected: "
                            f"{', '.join(self.fields) or 'none'})")
        for name, spec in self.fields.items():
            if name not in data:
                if spec.required:
                    raise BodyError(f"{name}: missing")
                continue
            spec.check(name, data[name])
        return data

    def openapi(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {n: s.openapi() for n, s in self.fields.items()},
        }
        required = [n for n, s in self.fields.items() if s.required]
        if required:  # OpenAPI 3.0 forbids an empty "required"
            out["required"] = required
        return out
