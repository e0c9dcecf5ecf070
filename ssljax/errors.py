"""The errors a user fixes, told apart from bugs by their type, and how every command reports them.

A `UserError` (a bad config value, data not on this machine, a run directory without what the
command needs, a run that diverged) is printed as one `error: ...` message and exits with its
code; anything else is a bug and keeps its traceback. A leaf: it imports nothing of ssljax.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar('T')


class UserError(Exception):
  """A problem the user fixes by changing the command, the config or the data."""

  exit_code = 2


class ConfigError(UserError, ValueError):
  """Config values the run cannot use: one problem per line, each naming the field, its value,
  what is allowed and an example fix. A ValueError too, for callers that catch those."""

  def __init__(self, problems: str | Sequence[str]):
    self.problems = [problems] if isinstance(problems, str) else list(problems)
    super().__init__('\n'.join(self.problems))

  def __str__(self) -> str:
    if len(self.problems) == 1:
      return self.problems[0]
    return f'{len(self.problems)} problems in the config:\n' + '\n'.join(
      f'  {p}' for p in self.problems
    )


class DatasetNotFoundError(UserError):
  """The configured data is not on this machine; the message says how to get it."""


class DataError(UserError, ValueError):
  """The data is on this machine but unusable as configured (too many unreadable files, say)."""


class RunNotFoundError(UserError, FileNotFoundError):
  """A run directory lacks what the command needs (config.json, a checkpoint)."""


class TrainingDiverged(UserError):
  """The loss or the gradient became non-finite: the run stopped without saving that state."""

  exit_code = 3


class TrainingCollapsed(UserError):
  """The label-free health metrics fell below their floors and config.health.stop_on_collapse
  is set: the run stopped without saving that state."""

  exit_code = 4


def run_command(fn: Callable[..., T], *args, **kwargs) -> T:
  """fn(*args, **kwargs); a UserError becomes `error: <message>` on stderr and its exit code."""
  try:
    return fn(*args, **kwargs)
  except UserError as e:
    sys.stdout.flush()
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
