"""retain_freed_memory: glibc malloc keeps large freed arrays for reuse (runtime/allocator.py)."""

from __future__ import annotations

import platform

import pytest

from service.runtime.allocator import retain_freed_memory
from service.settings import Settings


def test_zero_leaves_the_defaults():
    assert retain_freed_memory(0) is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_glibc_takes_the_setting():
    assert retain_freed_memory(64) is True


def test_the_setting_is_bounded():
    assert Settings().retain_freed_mb == 64
    with pytest.raises(ValueError):
        Settings(retain_freed_mb=-1)
