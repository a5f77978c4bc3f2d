"""The base of every config section (pure data: importing it loads no torch)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, model_validator


class Spec(BaseModel):
    """Base of every config section: unknown keys are errors; values are validated on assignment.

    A family's section may name fields that only one setting of another field reads (`USED_ONLY_WHEN`:
    `{"hidden": ("net", ("mlp",))}`): setting such a field to a non-default value under another setting
    is a one-line error naming the fix, never a value silently ignored.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: {field: (selecting field, the values of it under which the field is read)}
    USED_ONLY_WHEN: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {}

    @model_validator(mode="after")
    def _check_fields_are_read(self):
        for key, (selector, values) in self.USED_ONLY_WHEN.items():
            value, default = getattr(self, key), type(self).model_fields[key].default
            chosen = getattr(self, selector)
            if key in self.model_fields_set and value != default and chosen not in values:
                raise ValueError(f"model.{key}={value} is read only with model.{selector}={'|'.join(values)}, but "
                                 f"model.{selector}={chosen}; drop model.{key} or set model.{selector}={values[0]}")
        return self
