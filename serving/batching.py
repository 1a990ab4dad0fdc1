"""Server-side batching of concurrent Predict calls, as `--enable_batching` does in TF Serving.

Requests to the same model version and signature whose inputs agree on dtype and on every
dimension but the first are queued, concatenated along dimension 0, run as one call, and
the outputs split back by rows. A batch closes when it holds `max_batch_size` rows or when
its oldest request has waited `batch_timeout_micros`. A batch that fails runs each of its
requests again alone, so one caller's bad input fails only that caller. With `allowed_batch_sizes`, a batch is
padded (repeating its first row) up to the next allowed size, and the padding is dropped
from the outputs.

The same requirements and error messages as TF Serving's batching session apply: every
input needs a 0th dimension of the same size, a request may not exceed `max_batch_size`,
and every output must be batch-major (0th dimension = rows in the batch).
"""
import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2

from serving.errors import ServingError, invalid_argument

log = logging.getLogger("serving.batching")


def _batching_parameters_class():
    """The BatchingParameters message of tensorflow_serving's session_bundle_config.proto.

    tensorflow-serving-api does not ship that proto's Python module, so it is declared here
    with the same package, names and field numbers, so the text files real TF Serving reads
    parse identically.
    """
    try:
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2
        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="tfrec/serving/batching_parameters.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = file_proto.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for name, number, wrapper in [
            ("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
            ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
            ("thread_pool_name", 5, "StringValue")]:
        message.field.add(name=name, number=number, type=F.TYPE_MESSAGE,
                          type_name=f".google.protobuf.{wrapper}", label=F.LABEL_OPTIONAL)
    message.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64,
                      label=F.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL,
                      label=F.LABEL_OPTIONAL)
    pool.Add(file_proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()


@dataclass(frozen=True)
class BatchingOptions:
    """Resolved batching settings; defaults are TF Serving's BasicBatchScheduler defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = max(1, os.cpu_count() or 1)
    allowed_batch_sizes: tuple = field(default_factory=tuple)

    @classmethod
    def from_text(cls, text, source="batching parameters"):
        """Parses a text-format BatchingParameters (what --batching_parameters_file holds)."""
        params = BatchingParameters()
        try:
            text_format.Parse(text, params)
        except text_format.ParseError as strict_error:
            try:
                text_format.Parse(text, params, allow_unknown_field=True)
            except text_format.ParseError:
                raise ValueError(f"Cannot parse {source}: {strict_error}") from None
            log.warning("%s: ignoring a field this server does not implement (%s)",
                        source, strict_error)
        return cls.from_proto(params)

    @classmethod
    def from_proto(cls, params):
        defaults = cls()

        def wrapped(name, default):
            return getattr(params, name).value if params.HasField(name) else default

        options = cls(
            max_batch_size=wrapped("max_batch_size", defaults.max_batch_size),
            batch_timeout_micros=wrapped("batch_timeout_micros", defaults.batch_timeout_micros),
            max_enqueued_batches=wrapped("max_enqueued_batches", defaults.max_enqueued_batches),
            num_batch_threads=wrapped("num_batch_threads", defaults.num_batch_threads),
            allowed_batch_sizes=tuple(params.allowed_batch_sizes))
        if getattr(params, "pad_variable_length_inputs", False):
            log.warning("pad_variable_length_inputs is not implemented: requests whose "
                        "non-batch dimensions differ run in separate batches")
        options.validate()
        return options

    def validate(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {self.max_batch_size}")
        if self.num_batch_threads < 1:
            raise ValueError(f"num_batch_threads must be positive, got {self.num_batch_threads}")
        if self.batch_timeout_micros < 0:
            raise ValueError("batch_timeout_micros must not be negative")
        sizes = list(self.allowed_batch_sizes)
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:])):
                raise ValueError("allowed_batch_sizes entries must be monotonically increasing")
            if sizes[-1] != self.max_batch_size:
                raise ValueError("final entry in allowed_batch_sizes must equal max_batch_size")


class BatcherClosed(ServingError):
    """Submitted to a Batcher that was closed (its version is being unloaded); the caller
    still holding the version may run the request alone."""

    def __init__(self, message):
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)


class _Task:
    """One request waiting in a batch queue.

    Its caller blocks in `wait` until a batch worker calls `finish`: on a bare lock, one C
    call on each side (the wait releases the GIL), where an Event costs a Condition and
    several Python calls per task of every batch.
    """

    def __init__(self, inputs, rows, key):
        self.inputs = inputs
        self.rows = rows
        self.key = key
        self.enqueued = time.monotonic()
        self.outputs = None
        self.error = None
        self._done = threading.Lock()
        self._done.acquire()

    def wait(self):
        self._done.acquire()

    def finish(self):
        self._done.release()


def _batch_rows(inputs):
    """Rows of a request (its 0th dimension), with TF Serving's batching errors."""
    if not inputs:
        raise invalid_argument("Batching Run() must have at least one input tensor")
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise invalid_argument("Batching Run() input tensors must have at least one "
                                   "dimension")
        sizes.add(array.shape[0])
    if len(sizes) > 1:
        raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension "
                               "size")
    return sizes.pop()


class Batcher:
    """Batches calls of `run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]`.

    `submit` blocks its caller until the batch holding its request has run, and returns that
    request's rows of every output. Worker threads (`num_batch_threads`) form and run batches.
    """

    def __init__(self, run, options, name="batcher"):
        self._run = run
        self._options = options
        self._name = name
        self._queue = collections.deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs):
        """Runs `inputs` inside a batch; returns this request's outputs."""
        rows = _batch_rows(inputs)
        limit = self._options.max_batch_size
        if rows > limit:
            raise invalid_argument(
                f"Task size {rows} is larger than maximum input batch size {limit}")
        key = tuple(sorted((alias, array.dtype.str, array.shape[1:])
                           for alias, array in inputs.items()))
        task = _Task(inputs, rows, key)
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"{self._name}: the model version is being unloaded")
            capacity = limit * self._options.max_enqueued_batches
            if self._queued_rows + rows > capacity:
                # TF 2.20's SharedBatchScheduler answers UNAVAILABLE (shared_batch_scheduler.h)
                raise ServingError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"The batch scheduling queue to which this task was submitted is full; "
                    f"task size is {rows} but scheduling capacity is only "
                    f"{capacity - self._queued_rows}")
            opens_batch = not self._queue
            self._queue.append(task)
            self._queued_rows += rows
            # One worker is woken to open a batch (start its timeout) or to close a full one;
            # a worker timing the open batch needs nothing for a task that does not fill it.
            if opens_batch or self._queued_rows >= limit:
                self._cond.notify()
        task.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    @property
    def threads(self):
        return list(self._threads)

    def close(self):
        """Stops the workers after the queued requests have run."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _next_batch(self):
        """Waits for a full or timed-out batch; returns its tasks (None once closed)."""
        timeout = self._options.batch_timeout_micros / 1e6
        limit = self._options.max_batch_size
        with self._cond:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                first = self._queue[0]
                same_key_rows = sum(t.rows for t in self._queue if t.key == first.key)
                wait = first.enqueued + timeout - time.monotonic()
                if same_key_rows >= limit or wait <= 0 or self._closed:
                    break
                self._cond.wait(wait)
            batch, rows = [], 0
            for task in list(self._queue):
                if task.key == first.key and rows + task.rows <= limit:
                    batch.append(task)
                    rows += task.rows
                    self._queue.remove(task)
            self._queued_rows -= rows
            if self._queue:  # tasks of another key, or beyond max_batch_size: a batch of their own
                self._cond.notify()
            return batch

    def _work(self):
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                if not self._run_or_fail(batch) and len(batch) > 1:
                    # One caller's bad input (a NaN the model's checks refuse) fails the whole
                    # batch: each request runs again alone, so every caller gets its own outputs
                    # or its own error, never another caller's.
                    for task in batch:
                        task.error = None
                        self._run_or_fail([task])
            finally:
                for task in batch:
                    task.finish()

    def _run_or_fail(self, batch):
        """Runs `batch`; whether it ran. If not, each of its tasks holds the error."""
        try:
            self._run_batch(batch)
            return True
        except ServingError as error:
            failure = error
        except Exception as error:  # noqa: BLE001 - a worker must never die
            log.exception("%s: batch failed", self._name)
            failure = ServingError(grpc.StatusCode.INTERNAL, str(error))
        for task in batch:
            task.error = failure
        return False

    def _padded_size(self, rows):
        if not rows:  # a batch of 0-row requests has no row to pad with; the model takes 0 rows
            return 0
        for size in self._options.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    def _run_batch(self, batch):
        rows = sum(task.rows for task in batch)
        padded = self._padded_size(rows)
        inputs = {}
        for alias in batch[0].inputs:
            parts = [task.inputs[alias] for task in batch]
            if padded > rows:  # the first row of the batch, repeated (not of a 0-row request's part)
                first_row = next(part for part in parts if len(part))[:1]
                parts.append(np.repeat(first_row, padded - rows, axis=0))
            inputs[alias] = np.concatenate(parts, axis=0)
        log.debug("%s: running a batch of %d requests, %d rows (padded to %d)",
                  self._name, len(batch), rows, padded)
        outputs = self._run(inputs)
        for alias, array in outputs.items():
            if array.ndim == 0:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"Batched output tensor has 0 dimensions (output {alias})")
            if array.shape[0] != padded:
                raise ServingError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Batched output tensor's 0th dimension does not equal the sum of the 0th "
                    f"dimension sizes of the input tensors (output {alias}: "
                    f"{array.shape[0]} != {padded})")
        start = 0
        for task in batch:
            task.outputs = {alias: array[start:start + task.rows]
                            for alias, array in outputs.items()}
            start += task.rows
