"""Progress bars with tqdm when it is installed and asked for; otherwise nothing."""
from __future__ import annotations

from typing import Any, Optional

try:
    import tqdm as _tqdm
except ImportError:  # tqdm is optional
    _tqdm = None


class Progress:
    """A bar of `total` steps, or a no-op when disabled or tqdm is missing."""

    def __init__(self, total: int, description: str, enabled: bool):
        self._bar: Optional[Any] = None
        self._done = 0
        if enabled and _tqdm is not None:
            self._bar = _tqdm.tqdm(total=total, desc=description, unit_scale=True)

    @property
    def active(self) -> bool:
        """Whether a bar is shown."""
        return self._bar is not None

    def update(self, steps: int) -> None:
        """Advances by `steps`."""
        self._done += steps
        if self._bar is not None:
            self._bar.update(steps)

    def set(self, done: int) -> None:
        """Moves to `done` steps (never backwards)."""
        if done > self._done:
            self.update(done - self._done)

    def close(self) -> None:
        """Removes the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
