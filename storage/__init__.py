"""Object storage for qhybrid: the store adapter, the key layout and safe tar handling."""

from . import keys
from .store import LocalStore, ObjectInfo, ObjectStore, S3Store, open_store, validate_key
from .tarsafe import is_hdf5, is_tar, pack_dir, safe_extract

__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "S3Store",
    "is_hdf5",
    "is_tar",
    "keys",
    "open_store",
    "pack_dir",
    "safe_extract",
    "validate_key",
]
