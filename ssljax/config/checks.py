"""Checks of a config's values, gathered so that one refusal lists every problem at once.

Each module checks the fields it owns (`optim.check_config`, `models.check_config`,
`data.check_config`, each method's `check_config`, ...) through a `Checks`; `train.validate` runs
them all before any data is read or anything compiles. A problem names the field, the value,
what is allowed, and an example fix taken from the method's defaults when they are valid.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from ssljax.errors import ConfigError

MISSING = object()


def _flag_value(value: Any) -> str:
  """How a value is written after --config.field= on a shell command line."""
  if isinstance(value, str):
    return value or "''"
  if isinstance(value, tuple | list):
    return f'"{tuple(value)!r}"'
  return repr(value)


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _bounds_text(low, high, *, low_open: bool = False, high_open: bool = False) -> str:
  if low is not None and high is not None:
    return f'in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
  if low is not None:
    return f'{">" if low_open else ">="} {low:g}'
  if high is not None:
    return f'{"<" if high_open else "<="} {high:g}'
  return ''


def _within(x, low, high, *, low_open: bool = False, high_open: bool = False) -> bool:
  if low is not None and (x <= low if low_open else x < low):
    return False
  return not (high is not None and (x >= high if high_open else x > high))


class Checks:
  """The problems found in `config` so far. `defaults` (the method's default config) supplies
  the example fixes."""

  def __init__(
    self, config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict | None = None
  ):
    self.config = config
    self.defaults = defaults
    self.problems: list[str] = []

  # ------------------------------------------------------------------ reading fields

  @staticmethod
  def lookup(tree: Any, field: str) -> Any:
    for part in field.split('.'):
      if not isinstance(tree, Mapping | ml_collections.ConfigDict) or part not in tree:
        return MISSING
      tree = tree[part]
    return tree

  def value(self, field: str) -> Any:
    """config.<field> ('a.b.c'), or MISSING."""
    return self.lookup(self.config, field)

  def _example(self, field: str, valid: Callable[[Any], bool], fallback: Any) -> Any:
    default = MISSING if self.defaults is None else self.lookup(self.defaults, field)
    if default is not MISSING and default is not None and valid(default):
      return default
    return fallback

  # ------------------------------------------------------------------ reporting

  def fail(self, field: str, allowed: str, fix: Any = MISSING, value: Any = MISSING) -> None:
    """Records 'config.FIELD=VALUE: ALLOWED; e.g. --config.FIELD=FIX'."""
    value = self.value(field) if value is MISSING else value
    text = f'config.{field}={value!r}: {allowed}'
    if fix is not MISSING and fix is not None:
      text += f'; e.g. --config.{field}={_flag_value(fix)}'
    self.problems.append(text)

  def require(self, ok: bool, field: str, allowed: str, fix: Any = MISSING) -> bool:
    if not ok:
      self.fail(field, allowed, fix)
    return ok

  def absorb(self, fn: Callable, *args, **kwargs) -> bool:
    """Runs a check that raises ConfigError; records its problems instead. True if it passed."""
    try:
      fn(*args, **kwargs)
    except ConfigError as e:
      self.problems.extend(e.problems)
      return False
    return True

  def raise_if_any(self) -> None:
    if self.problems:
      raise ConfigError(self.problems)

  @property
  def ok(self) -> bool:
    return not self.problems

  # ------------------------------------------------------------------ kinds of field

  def choice(self, field: str, options: Sequence[Any], fix: Any = MISSING) -> bool:
    valid = lambda v: v in options  # noqa: E731
    fix = self._example(field, valid, options[0]) if fix is MISSING else fix
    return self.require(
      valid(self.value(field)), field, f'one of {", ".join(map(str, options))}', fix
    )

  def boolean(self, field: str) -> bool:
    valid = lambda v: isinstance(v, bool)  # noqa: E731
    return self.require(
      valid(self.value(field)), field, 'True or False', self._example(field, valid, True)
    )

  def number(
    self,
    field: str,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    optional: bool = False,
    fix: Any = MISSING,
    **open_ends: bool,
  ) -> bool:
    """A real number (an integer if `integer`) within [low, high] (open at the ends
    `low_open` / `high_open` name); None too if `optional`."""

    def valid(v):
      if optional and v is None:
        return True
      if not _is_number(v) or (integer and int(v) != v):
        return False
      return _within(v, low, high, **open_ends)

    kind = 'an integer' if integer else 'a number'
    allowed = f'{kind} {_bounds_text(low, high, **open_ends)}'.strip()
    if optional:
      allowed += ' (or None)'
    fallback = low if low is not None and not open_ends.get('low_open') else None
    fix = self._example(field, valid, fallback) if fix is MISSING else fix
    return self.require(valid(self.value(field)), field, allowed, fix)

  def positive(self, field: str, **kwargs) -> bool:
    return self.number(field, 0, low_open=True, **kwargs)

  def nonnegative(self, field: str, **kwargs) -> bool:
    return self.number(field, 0, **kwargs)

  def count(self, field: str, minimum: int = 1, **kwargs) -> bool:
    return self.number(field, minimum, integer=True, **kwargs)

  def probability(self, field: str) -> bool:
    return self.number(field, 0, 1)

  def pair(
    self,
    field: str,
    low: float | None = None,
    high: float | None = None,
    *,
    optional: bool = False,
    fix: Any = MISSING,
    **open_ends: bool,
  ) -> bool:
    """A range (low, high): two numbers, low <= high, both within the bounds of `number`."""

    def valid(v):
      if optional and v is None:
        return True
      return (
        isinstance(v, tuple | list)
        and len(v) == 2
        and all(_is_number(x) and _within(x, low, high, **open_ends) for x in v)
        and v[0] <= v[1]
      )

    bounds = _bounds_text(low, high, **open_ends)
    allowed = f'a pair (low, high) with low <= high{", each " + bounds if bounds else ""}'
    fix = self._example(field, valid, None) if fix is MISSING else fix
    return self.require(valid(self.value(field)), field, allowed, fix)


def check(
  config: ml_collections.ConfigDict,
  *checkers: Callable[[Checks], None],
  defaults: ml_collections.ConfigDict | None = None,
) -> None:
  """Runs each checker on one Checks; raises ConfigError listing every problem found."""
  checks = Checks(config, defaults)
  for checker in checkers:
    checker(checks)
  checks.raise_if_any()
