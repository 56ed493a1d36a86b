"""Finding classes and images in an ImageFolder tree.

The class map is decided once, from ``train/``: sorted, Unicode-normalised folder names. Every
other split looks labels up by *name* in that map, so a validation split that lacks a class keeps
every other label right, and a split holding a class that train lacks is an error naming it.

A compact list of file paths: one bytes buffer and an offset array, no object per file.

A folder of 10^6 images held as a Python list of ``Path`` objects costs hundreds of MB per
process, and every loader worker that touches the list (reference counts) copies its pages
after ``fork``, so memory grows with the workers. :class:`Paths` keeps the same paths in two
NumPy arrays, which forked workers share untouched, and makes a ``Path`` only when one is asked
for.
"""

from __future__ import annotations

import itertools
import os
import unicodedata
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import numpy as np
from typing_extensions import override

from classifier.errors import UserError, printable
from classifier.pil_decode import IMAGE_EXTENSIONS, is_image_name


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


#: Folder names that are never classes (tool and OS droppings).
IGNORED_DIRS = frozenset({"__MACOSX", "__pycache__", "@eaDir", "$RECYCLE.BIN"})
#: Most folders one split may hold; more means links fanning out (or the wrong data_dir).
MAX_FOLDERS = 200_000

FileId = tuple[int, int]


class DataError(UserError, ValueError):
    """A problem with the image folder that the user must fix; the message says how."""


def class_name(folder_name: str) -> str:
    """The class name of a folder: NFC-normalised, with bytes that are not UTF-8 and control
    characters escaped (``f\\xffx``, ``\\x1b[31m``), so checkpoints, figures, CSVs, ONNX
    metadata and terminals can all hold it."""
    readable = os.fsencode(folder_name).decode("utf-8", errors="backslashreplace")
    return printable(
        unicodedata.normalize("NFC", readable).replace("\n", "\\n").replace("\t", "\\t")
    )


def _is_class_dir(entry: os.DirEntry[str]) -> bool:
    return (
        entry.is_dir(follow_symlinks=True)
        and not entry.name.startswith(".")
        and entry.name not in IGNORED_DIRS
    )


def class_dirs(split_dir: Path) -> dict[str, Path]:
    """Map each class name (:func:`class_name`) in ``split_dir`` to its folder.

    Raises:
        DataError: two folders differ only by case or Unicode form (``Cat`` and ``cat``).
    """
    found: dict[str, Path] = {}
    folded: dict[str, str] = {}
    with os.scandir(split_dir) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if not _is_class_dir(entry):
                continue
            name = class_name(entry.name)
            key = name.casefold()
            if key in folded:
                raise DataError(
                    f"{split_dir}: class folders {folded[key]!r} and {entry.name!r} differ only "
                    "by case or Unicode form; merge or rename one of them."
                )
            folded[key] = entry.name
            found[name] = Path(entry.path)
    return dict(sorted(found.items()))


@dataclass
class Visited:
    """What one walk has reached, by (device, inode): each folder and file is taken once.

    Attributes:
        folders: the first path each folder was walked by.
        files: the index (in ``paths``) each image file was first reached at.
        paths: the image files, in walk order (each once).
        keys: ``(size, mtime_ns, ctime_ns, device, inode)`` of each file in ``paths``, from the
            walk's own ``stat`` (the pre-scan's cache key).
        repeats: ``(path, first path)`` of files and folders reached again (links, hard links).
        skipped: entries with an image name that are no regular file (a FIFO, a socket, a
            dangling link): left out, and named in a warning.
        ignored: regular files without an image name (hidden, no extension, another format
            such as ``.heic``): left out; ``predict`` names them in a warning.
    """

    folders: dict[FileId, Path] = field(default_factory=dict)
    files: dict[FileId, int] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    keys: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    repeats: list[tuple[Path, Path]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _kind(entry: os.DirEntry[str]) -> str:
    """``dir``, ``file`` or ``other`` (a FIFO, a socket, a dangling or looping link), links
    followed."""
    try:
        if entry.is_dir(follow_symlinks=True):
            return "dir"
        return "file" if entry.is_file(follow_symlinks=True) else "other"
    except OSError:  # a link to itself: too many levels of symbolic links
        return "other"


def _file_id(stat: os.stat_result) -> FileId:
    return stat.st_dev, stat.st_ino


def walk_images(folder: Path, visited: Visited | None = None) -> Paths:
    """All image files under ``folder``, recursively and sorted, following symlinks; each file
    is also added to ``visited`` (``paths`` and ``keys``).

    Each folder and file is taken once, however many links reach it (``visited`` records the
    repeats), so links that branch without a cycle cannot multiply the walk.

    Raises:
        DataError: a symlink points back to a folder being walked (a cycle), or the walk
            reaches more than :data:`MAX_FOLDERS` folders.
    """
    visited = Visited() if visited is None else visited
    start = len(visited.paths)
    _walk(folder, visited)
    return Paths.of(visited.paths[start:])


def _walk(folder: Path, visited: Visited) -> int:
    """:func:`walk_images` into ``visited``; the number of new files."""
    start = len(visited.paths)
    ancestors: list[str] = []

    def visit(directory: Path) -> None:
        real = os.path.realpath(directory)
        if real in ancestors:
            raise DataError(f"symlink cycle: {directory} points back to {real}; remove the link.")
        key = _file_id(os.stat(directory))
        first = visited.folders.setdefault(key, directory)
        if first is not directory:
            visited.repeats.append((directory, first))
            return
        if len(visited.folders) > MAX_FOLDERS:
            raise DataError(
                f"{folder} holds more than {MAX_FOLDERS} folders (symlinks fanning out?); "
                "point data_dir at the images or remove the links."
            )
        ancestors.append(real)
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                kind = _kind(entry)
                if kind == "dir":
                    if not entry.name.startswith(".") and entry.name not in IGNORED_DIRS:
                        visit(Path(entry.path))
                elif kind == "file" and is_image_name(entry.name):
                    _take(entry.path, entry.stat(follow_symlinks=True))
                elif is_image_name(entry.name):
                    visited.skipped.append(entry.path)
                elif kind == "file":
                    visited.ignored.append(entry.path)
        ancestors.pop()

    def _take(path: str, info: os.stat_result) -> None:
        first = visited.files.setdefault(_file_id(info), len(visited.paths))
        if first == len(visited.paths):
            visited.paths.append(path)
            visited.keys.append(
                (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_dev, info.st_ino)
            )
        else:
            visited.repeats.append((Path(path), Path(visited.paths[first])))

    visit(folder)
    return len(visited.paths) - start


#: A file's cache key columns: size, modification and change times (ns), device, inode.
KEY_COLUMNS = 5


@dataclass
class Split:
    """The images of one split with labels from the train class map.

    Attributes:
        name: ``train``, ``val``, ``test`` or ``predict``.
        root: the split's folder.
        paths: image files, sorted by class then path (:class:`~classifier.splits.Paths`:
            no Python object per file).
        labels: class index of each path in the train class map (-1: unknown, predict only).
        keys: ``(size, mtime_ns, ctime_ns, device, inode)`` of each path, as walked.
        missing_classes: train classes with no images in this split.
        empty_classes: class folders present but holding no image.
        repeats: ``(path, first path)`` of files and folders the walk reached twice.
        unusable: indices of files the pre-scan found unusable that stay in the split (only
            ``predict`` keeps them: each file gets its row, marked unreadable).
        origins: for splits read from annotation files (JSONL, CSV), ``file:line`` of each
            row; ``None`` for class folders.
        attributes: for such splits, each row's attributes as JSON (a JSONL row's
            ``metadata``, a CSV row's extra columns); ``None`` for class folders.
        rejected: ``{file:line: reason}`` of rows left out while reading (a missing file, bad
            JSON, a missing key, a path leaving the data root, a label train lacks).
    """

    name: str
    root: Path
    paths: Paths = field(default_factory=Paths)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    keys: np.ndarray = field(default_factory=lambda: np.zeros((0, KEY_COLUMNS), np.int64))
    missing_classes: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    repeats: list[tuple[Path, Path]] = field(default_factory=list)
    unusable: set[int] = field(default_factory=set)
    origins: Texts | None = None
    attributes: Texts | None = None
    rejected: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, indices: np.ndarray | list[int], name: str | None = None) -> Split:
        """The files at ``indices`` as a split of their own (same root)."""
        chosen = np.asarray(indices, dtype=np.int64)
        return Split(
            name or self.name,
            self.root,
            self.paths.select(chosen),
            self.labels[chosen],
            self.keys[chosen],
            repeats=self.repeats,
            origins=None if self.origins is None else self.origins.select(chosen),
            attributes=None if self.attributes is None else self.attributes.select(chosen),
        )


def _finish(split: Split, visited: Visited, labels: list[int]) -> None:
    """Move what the walk found into ``split`` (compact arrays; the walk's lists go)."""
    split.paths = Paths.of(visited.paths)
    split.labels = np.asarray(labels, dtype=np.int64)
    split.keys = np.asarray(visited.keys, dtype=np.int64).reshape(-1, KEY_COLUMNS)
    split.repeats = visited.repeats
    if visited.skipped:
        warnings.warn(
            f"{split.name}/: {len(visited.skipped)} entr(ies) named like images are no regular "
            f"files (FIFOs, sockets, dangling links) and are left out: {_some(visited.skipped)}",
            stacklevel=3,
        )


def read_split(name: str, root: Path, class_names: list[str]) -> Split:
    """Collect the images of a labelled split, looking labels up by class name.

    Raises:
        DataError: the split has a class that ``class_names`` lacks, train has an empty class,
            or the split holds no image at all.
    """
    index = {c: i for i, c in enumerate(class_names)}
    split, visited, labels = Split(name, root), Visited(), []
    for class_name, folder in class_dirs(root).items():
        if class_name not in index:
            raise DataError(
                f"{name} split has class {class_name!r} ({folder}) that train/ lacks; "
                f"known classes: {', '.join(class_names)}. Add it to train/ or remove it."
            )
        found = _walk(folder, visited)
        if not found:
            split.empty_classes.append(class_name)
        labels += [index[class_name]] * found
    _finish(split, visited, labels)
    present = set(labels)
    split.missing_classes = [c for i, c in enumerate(class_names) if i not in present]
    if name == "train" and split.empty_classes:
        raise DataError(
            f"train/ class folder(s) without images: {', '.join(split.empty_classes)} in {root}. "
            "Every class needs training images; add some or remove the folder."
        )
    if not len(split):
        raise DataError(f"no images found in {root} (extensions: .jpg .png .webp .tif ...).")
    if split.empty_classes:
        warnings.warn(
            f"{name}/ has empty class folder(s): {', '.join(split.empty_classes)}", stacklevel=2
        )
    _check_repeats(split)
    return split


def _class_of(path: Path, root: Path) -> str:
    return path.relative_to(root).parts[0]


def _check_repeats(split: Split) -> None:
    """Refuse a file or folder that links make reachable from two class folders (its label
    would depend on the walk order); name the other repeats (used once, under their first path).

    Raises:
        DataError: a file or folder is reachable from two class folders.
    """
    for path, first in split.repeats:
        if _class_of(path, split.root) != _class_of(first, split.root):
            raise DataError(
                f"{split.name}/: {path} and {first} are the same (a link) under two classes, "
                "so its label is ambiguous; remove the link or the copy."
            )
    _warn_repeats(split)


def _warn_repeats(split: Split) -> None:
    """Name files and folders reached by more than one path (used once, under the first)."""
    repeats = split.repeats
    if repeats:
        listing = "; ".join(f"{p} = {first}" for p, first in repeats[:5])
        more = f" and {len(repeats) - 5} more" if len(repeats) > 5 else ""
        warnings.warn(
            f"{split.name}/: {len(repeats)} file(s) or folder(s) reached by more than one path "
            f"(links) are used once: {listing}{more}",
            stacklevel=3,
        )


def shared_files(splits: dict[str, Split]) -> list[tuple[str, str, Path, Path]]:
    """Files that two splits both hold (the same device and inode, through links or hard
    links): ``(split, other split, path, other path)``. Such a file leaks between the splits."""
    found = []
    names = sorted(splits)
    ids = {n: splits[n].keys[:, 3:5] for n in names}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            theirs = {(int(d), int(n)): k for k, (d, n) in enumerate(ids[second])}
            for k, (device, inode) in enumerate(ids[first]):
                other = theirs.get((int(device), int(inode)))
                if other is not None:
                    found.append(
                        (first, second, splits[first].paths[k], splits[second].paths[other])
                    )
    return found


def read_unlabelled(root: Path, class_names: list[str]) -> Split:
    """Collect images to predict: any folder tree; images under a known class folder keep it.

    Raises:
        DataError: ``root`` does not exist or holds no image.
    """
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of images (it does not exist, or is a file).")
    index = {unicodedata.normalize("NFC", c): i for i, c in enumerate(class_names)}
    split, visited, labels = Split("predict", root), Visited(), []
    for path in walk_images(root, visited):
        parent = class_name(path.parent.name)
        labels.append(index.get(parent, -1) if path.parent != root else -1)
    _finish(split, visited, labels)
    if visited.ignored:
        warnings.warn(
            f"{root}: {len(visited.ignored)} file(s) not predicted: hidden, or not named like an "
            f"image ({', '.join(sorted(IMAGE_EXTENSIONS))}): {_some(visited.ignored)}",
            stacklevel=2,
        )
    if not len(split):
        raise DataError(f"no images found in {root}.")
    _warn_repeats(split)
    return split


def _some(paths: list[str]) -> str:
    """The first three of ``paths``, escaped, for a warning."""
    return "; ".join(printable(p) for p in paths[:3])
