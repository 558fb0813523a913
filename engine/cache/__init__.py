"""SSD prefix cache: paged block store, boundary-snapshot store, prefix reuse.

Importing this package does not import MLX; only the prefix (de)serialization helpers do, lazily.
"""

from .block_store import BlockStore
from .snapshot_store import InvalidRequestId, SnapshotStore, validate_request_id
from .prefix import PrefixCache, block_hashes, model_signature, prefill_with_cache

__all__ = ["BlockStore", "SnapshotStore", "InvalidRequestId", "validate_request_id", "PrefixCache",
           "block_hashes", "model_signature", "prefill_with_cache"]
