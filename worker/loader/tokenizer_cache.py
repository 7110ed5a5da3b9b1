"""A GGUF file's tokenizer, converted once and kept as tokenizer files.

transformers builds a GGUF's tokenizer by parsing the whole file again and converting its vocabulary:
about 5 s for SmolLM2's 49k tokens, on every worker start. The converted tokenizer is saved
(``save_pretrained``) in the cache directory, under a key of the file (path, size, mtime) and the
transformers version, and later starts read it from there in ~0.2 s. Workers starting together may
both convert; the first to rename its copy into place wins. A cache that cannot be read or written
costs only the conversion.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import transformers

from worker.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# Loading a saved tokenizer raises these for files that are missing, cut short or of another version.
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError)


def cache_entry(gguf_path: str, cache_dir: str) -> Path:
    """Where the tokenizer of ``gguf_path`` is kept: a new file, or a new transformers, gets a new one."""
    stat = os.stat(gguf_path)
    identity = f"{os.path.realpath(gguf_path)}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"{Path(gguf_path).stem}-{key}"


def gguf_tokenizer(gguf_path: str, cache_dir: str) -> Tokenizer:
    """The tokenizer inside ``gguf_path``: from the cache when it is there, else converted (and
    kept, unless ``cache_dir`` is empty)."""
    entry = cache_entry(gguf_path, cache_dir) if cache_dir else None
    if entry is not None and entry.is_dir():
        try:
            return Tokenizer.from_pretrained(entry)
        except _LOAD_ERRORS as exc:
            log.warning("tokenizer cache %s unreadable (%s); converting again", entry, exc)
    tokenizer = Tokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    if entry is not None:
        _keep(tokenizer, entry)
    return tokenizer


def _keep(tokenizer: Tokenizer, entry: Path) -> None:
    """Save into a fresh directory, then rename it into place, so no reader sees a half-written one."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".staging-"))
    except OSError as exc:
        log.warning("cannot cache the tokenizer in %s: %s", entry.parent, exc)
        return
    try:
        tokenizer.hf.save_pretrained(staging)
        shutil.rmtree(entry, ignore_errors=True)  # an unreadable entry from before
        os.replace(staging, entry)
    except OSError as exc:  # another worker renamed its copy first, or the disk is full
        log.debug("tokenizer cache %s: %s", entry, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
