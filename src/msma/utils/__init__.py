"""Small shared helpers with one home each: the cache folder, file hashing, atomic writes, progress bars."""

from msma.utils.files import atomic_write, atomic_write_bytes, atomic_write_text, sha256_file
from msma.utils.home import msma_home
from msma.utils.progress import progress_bar

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "msma_home", "progress_bar", "sha256_file"]
