"""Task data: loading (local files or the hub), splits, tokenisation and batching."""

from elastic_cli.data.encoding import Batch, Encoded, batches, encode
from elastic_cli.data.loading import load_splits, load_task_data
from elastic_cli.data.splits import Split, TaskData

__all__ = ["Batch", "Encoded", "Split", "TaskData", "batches", "encode", "load_splits", "load_task_data"]
