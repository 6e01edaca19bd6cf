"""What service/files.py held before it was split (issue 34): the formats are in
service/formats/ (one module per format family, one table), the file store and the file jobs in
service/file_store.py. The old names stay importable from here.

`_docx` and `_odt` are the office readers; setting either here (a test holding a job inside its
reader) sets the reader the office formats use.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from service.file_store import (
    FULL,
    GONE,
    MAX_NAME_BYTES,
    RELEASE_AFTER_S,
    STORE_PREFIX,
    Jobs,
    Store,
    safe_name,
    store,
    sweep_orphans,
)
from service.formats import EXTENSIONS, Limits, Translate, TranslateAs, office, translate_file
from service.formats.zipxml import MAX_RATIO, MAX_UNZIPPED

FORMATS = EXTENSIONS
_docx = office.read_docx
_odt = office.read_odt
_READERS = {"_docx": ".docx", "_odt": ".odt"}

__all__ = [
    "FORMATS", "FULL", "GONE", "MAX_NAME_BYTES", "MAX_RATIO", "MAX_UNZIPPED", "RELEASE_AFTER_S", "STORE_PREFIX",
    "Jobs", "Limits", "Store", "Translate", "TranslateAs", "safe_name", "store", "sweep_orphans", "translate_file",
]  # fmt: skip


class _Module(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _READERS:
            office.READERS[_READERS[name]] = value
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Module
