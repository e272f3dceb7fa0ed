"""Module-level skips for tests that need a program this machine may lack (Postfix, Sendmail, PostSRSd)."""
from __future__ import annotations

from typing import Callable

import pytest


def require(available: Callable[[], tuple[bool, str]], what: str) -> None:
    """Skip the calling test module unless ``available()`` says ``what`` can run here."""
    usable, why = available()
    if not usable:
        pytest.skip(f"{what} unavailable: {why}", allow_module_level=True)
