"""Exceptions raised by the data layer.

Both derive from ``ValueError`` so that callers that only know about bad
configuration values can still catch them.
"""

from __future__ import annotations


class DatasetNotFoundError(ValueError):
    """The dataset's files are not where the configuration says they are.

    The message always names the setting to change (``data.path`` or
    ``data.download``) and, where one exists, the command that installs the data.
    """


class DatasetCorruptError(ValueError):
    """The dataset's files exist but too many of them cannot be read."""
