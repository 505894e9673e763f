"""Exceptions raised by the retrieval package.

Every error names the file, record or argument it is about, so a user can find
the bad input without a debugger.
"""

from __future__ import annotations

import re

# Object reprs such as "<_io.BytesIO object at 0x7f..>" (PIL puts them in its
# messages) tell the user nothing and differ on every run.
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def clean_reason(text) -> str:
    """A one-line reason without object reprs or trailing whitespace."""
    text = _OBJECT_REPR.sub("", str(text))
    return " ".join(text.split())


class RetrievalError(Exception):
    """Base class for all retrieval errors."""


class ImageReadError(RetrievalError):
    """An image could not be opened or decoded.

    `path` is the file path (or `shard.tar:member` for a tar member, or a
    placeholder for an in-memory image); `reason` says what went wrong.
    """

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = clean_reason(reason)
        super().__init__(f"cannot read image {self.path}: {self.reason}")


class DimensionMismatchError(RetrievalError, ValueError):
    """Vectors do not have the dimension the index, database or embedder expects."""


class InvalidVectorError(RetrievalError, ValueError):
    """Vectors contain NaN or inf values, or have zero norm."""


class EmptyIndexError(RetrievalError):
    """A search was run against an index or database that holds no vectors."""


class CorruptIndexError(RetrievalError):
    """An index file (or its sidecar JSON) is unreadable, truncated or inconsistent."""


class CorruptDatabaseError(RetrievalError):
    """A database folder is missing files or its files disagree with each other."""


class MemoryBudgetError(RetrievalError, ValueError):
    """No index type fits in the given memory budget."""


class EmbedderMismatchError(RetrievalError, ValueError):
    """An embedder differs (weights or dimension) from the one a database was built with."""


class ModelLoadError(RetrievalError, ValueError):
    """A model's weights file is unreadable or does not match its architecture."""
