"""A compact list of file paths: one bytes buffer and an offset array, no object per file.

A folder of 10^6 images held as a Python list of ``Path`` objects costs hundreds of MB per
process, and every loader worker that touches the list (reference counts) copies its pages
after ``fork``, so memory grows with the workers. :class:`Paths` keeps the same paths in two
NumPy arrays, which forked workers share untouched, and makes a ``Path`` only when one is asked
for.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np
from typing_extensions import override


class Paths(Sequence[Path]):
    """An immutable sequence of paths stored as one buffer of their bytes and offsets.

    Args:
        data: the file system encoding of every path, one after another.
        offsets: ``len + 1`` positions into ``data``: path ``i`` is ``data[offsets[i]:
            offsets[i + 1]]``.
    """

    def __init__(self, data: np.ndarray | None = None, offsets: np.ndarray | None = None) -> None:
        self._data = np.zeros(0, np.uint8) if data is None else data
        self._offsets = np.zeros(1, np.int64) if offsets is None else offsets

    @classmethod
    def of(cls, paths: Iterable[str | os.PathLike[str]]) -> Paths:
        """The paths of ``paths`` (strings or ``Path`` objects), in order."""
        encoded = [os.fsencode(p) for p in paths]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        data = np.frombuffer(b"".join(encoded), np.uint8).copy()
        return cls(data, offsets)

    @override
    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> Path: ...

    @overload
    def __getitem__(self, index: slice) -> Paths: ...

    @override
    def __getitem__(self, index: int | slice) -> Path | Paths:
        if isinstance(index, slice):
            return self.select(range(len(self))[index])
        return Path(os.fsdecode(self.raw(index)))

    def raw(self, index: int) -> bytes:
        """Path ``index`` as bytes (what the file system stores)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"path index {index} out of range for {len(self)} paths")
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._data[start:end].tobytes()

    def digest(self) -> str:
        """A SHA-256 of every path in order (the buffer and its offsets: no object per path)."""
        import hashlib

        found = hashlib.sha256(self._data.tobytes())
        found.update(np.ascontiguousarray(self._offsets, dtype=np.int64).tobytes())
        return found.hexdigest()

    def all_raw(self) -> list[bytes]:
        """Every path as bytes, in order (one pass over the buffer)."""
        buffer, offsets = self._data.tobytes(), self._offsets.tolist()
        return [buffer[a:b] for a, b in itertools.pairwise(offsets)]

    @override
    def __iter__(self) -> Iterator[Path]:
        for index in range(len(self)):
            yield self[index]

    def select(self, indices: Iterable[int] | np.ndarray) -> Paths:
        """The paths at ``indices``, in that order."""
        chosen = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        chosen = chosen.astype(np.int64, copy=False)
        if not len(chosen):
            return Paths()
        starts, ends = self._offsets[chosen], self._offsets[chosen + 1]
        lengths = ends - starts
        offsets = np.zeros(len(chosen) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Every byte of every chosen path, by one fancy index (no Python loop per path).
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Paths(self._data[positions], offsets)

    def __add__(self, other: Sequence[Path]) -> Paths:
        extra = other if isinstance(other, Paths) else Paths.of(other)
        data = np.concatenate([self._data, extra._data])
        offsets = np.concatenate([self._offsets, extra._offsets[1:] + self._offsets[-1]])
        return Paths(data, offsets)

    @override
    def __eq__(self, other: object) -> bool:
        if isinstance(other, Paths):
            return bool(
                np.array_equal(self._offsets, other._offsets)
                and np.array_equal(self._data, other._data)
            )
        if isinstance(other, Sequence):
            return list(self) == [Path(p) for p in other]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, compared by value

    @override
    def __repr__(self) -> str:
        return f"Paths({len(self)} files)"

    @property
    def nbytes(self) -> int:
        """Memory the two arrays take."""
        return int(self._data.nbytes + self._offsets.nbytes)


class Texts(Sequence[str]):
    """Per-file strings (where a row came from, its attributes as JSON) held like
    :class:`Paths`: one buffer, no Python object per file until one is asked for.

    Args:
        table: the strings' bytes (file system encoding).
    """

    def __init__(self, table: Paths | None = None) -> None:
        self._table = Paths() if table is None else table

    @classmethod
    def of(cls, texts: Iterable[str]) -> Texts:
        """The strings of ``texts``, in order."""
        return cls(Paths.of(texts))

    @override
    def __len__(self) -> int:
        return len(self._table)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Texts: ...

    @override
    def __getitem__(self, index: int | slice) -> str | Texts:
        if isinstance(index, slice):
            return self.select(range(len(self))[index])
        return os.fsdecode(self._table.raw(index))

    def select(self, indices: Iterable[int] | np.ndarray) -> Texts:
        """The strings at ``indices``, in that order."""
        return Texts(self._table.select(indices))

    def __add__(self, other: Texts) -> Texts:
        return Texts(self._table + other._table)
