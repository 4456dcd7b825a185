"""Pure tensor operators of function-preserving growth, shared by every output path."""
from hyperclone.ops.split import split_exact
from hyperclone.ops.transform import Segment, chunk_tasks, produce_rows

__all__ = ["split_exact", "Segment", "chunk_tasks", "produce_rows"]
