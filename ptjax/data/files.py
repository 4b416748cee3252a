"""Source files of the local corpora: paths and globs resolved, fingerprinted and opened, on
local disks or any filesystem tf.io.gfile reaches; the error a corpus raises when its data
cannot be used. Shared by ptjax.data.corpora, the builders (ptjax.data.builders) and qa (a
leaf below them all)."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from ptjax.data.tf_setup import import_tf

tf = import_tf()


class DataError(ValueError):
    """Data that cannot be used as configured; the message names the file, line or key."""


def as_list(files: Sequence[str] | str) -> list[str]:
    """Paths or globs from a list or a comma-separated string; blanks dropped."""
    if isinstance(files, str):
        files = files.split(",")
    return [f.strip() for f in files if f.strip()]


def resolve(patterns: Sequence[str], key: str) -> list[str]:
    """Expands globs to a sorted, de-duplicated file list; a missing path or empty glob raises."""
    paths = []
    for pattern in patterns:
        remote = "://" in pattern
        if any(c in pattern for c in "*?["):
            matches = sorted(tf.io.gfile.glob(pattern) if remote else glob.glob(pattern))
            matches = [m for m in matches if not tf.io.gfile.isdir(m)]
            if not matches:
                raise FileNotFoundError(f"dataset.{key}: glob {pattern!r} matches no files.")
        else:
            if not tf.io.gfile.exists(pattern):
                raise FileNotFoundError(f"dataset.{key}: file {pattern!r} does not exist.")
            if tf.io.gfile.isdir(pattern):
                raise IsADirectoryError(
                    f"dataset.{key}: {pattern!r} is a directory; give files or a glob like "
                    f"'{pattern.rstrip('/')}/*.txt'."
                )
            matches = [pattern]
        for match in matches:
            path = match if remote else os.path.abspath(match)
            if path not in paths:
                paths.append(path)
    return paths


def fingerprint(paths: Sequence[str]) -> list:
    """(path, size, mtime) of each file, so edited files change the builder config name."""
    out = []
    for path in paths:
        stat = tf.io.gfile.stat(path)
        out.append([path, stat.length, stat.mtime_nsec])
    return out


def open_file(path: str):
    """`path` opened for reading bytes: a local file, or through tf.io.gfile (gs://, ...)."""
    return tf.io.gfile.GFile(path, "rb") if "://" in path else open(path, "rb")
