"""What peewee's own types leave out, said once for the type checker.

peewee's types say that a ``ModelSelect[M]`` yields ``M`` even after
``.dicts()`` or ``.tuples()`` (which return the same query): ``dict_rows``
and ``tuple_rows`` run the query the same way and say what comes out. The
context manager that turns driver exceptions into peewee's is not in its
types at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar, cast

import peewee as pw

M = TypeVar("M", bound=pw.Model)

# ``with exception_wrapper:`` around a cursor call made outside execute_sql.
exception_wrapper: Any = pw.__exception_wrapper__  # type: ignore[attr-defined]


def dict_rows(query: pw.BaseQuery) -> Iterator[dict[str, Any]]:
    """The rows of ``query`` as dicts (``query.dicts()``)."""
    return cast("Iterator[dict[str, Any]]", iter(query.dicts()))


def tuple_rows(query: pw.BaseQuery) -> Iterator[tuple[Any, ...]]:
    """The rows of ``query`` as tuples (``query.tuples()``)."""
    return cast("Iterator[tuple[Any, ...]]", iter(query.tuples()))
