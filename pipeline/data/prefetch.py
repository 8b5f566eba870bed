"""Prepare the next batches while the model runs on the current one.

``for batch in Prefetcher(loader, accelerator.device): ...`` yields the same batches in the same
order as ``loader``; a background thread fetches up to ``depth`` batches ahead. On a CPU that
overlaps the loader's work (reading, cropping, flipping, jitter in the batched path) with the
model, which releases the GIL inside torch ops. On a GPU the thread also copies each batch to
the device on a side CUDA stream (pinned memory, ``non_blocking``), so the copy overlaps the
previous step's kernels; the consumer's stream waits on an event before it touches the batch.

Exactness: nothing here draws random numbers. The loaders of this project draw augmentation
randomness from their own generators (:mod:`pipeline.data.augment`), never from torch's global one,
so fetching in another thread cannot interleave with the main thread's dropout draws.

Accelerate: a prepared loader reports through accelerate's ``GradientState`` when the batch in
hand is the last one (``end_of_dataloader``, used by ``accumulate`` and ``gather_for_metrics``).
Running it ahead would make that flag flip one batch early, so for a prepared loader the
prefetcher registers a stand-in that reports the flag of the batch the *consumer* holds. The
first batch is fetched in the calling thread, so accelerate's start-of-epoch work (the RNG state
broadcast between processes, a collective) happens in the main thread, in step on every rank.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Iterable, Iterator
from typing import Any

import torch

_ITEM, _END, _ERROR = 0, 1, 2


class _ConsumerView:
    """What accelerate's GradientState reads while a prefetcher runs a prepared loader ahead."""

    def __init__(self, end_of_dataloader: bool, remainder: int) -> None:
        self.end_of_dataloader = end_of_dataloader
        self.remainder = remainder


def _attach_view(loader: Any) -> tuple[Any, _ConsumerView] | None:
    state = getattr(loader, "gradient_state", None)
    if state is None or not hasattr(loader, "end_of_dataloader") or not hasattr(state, "_add_dataloader"):
        return None
    view = _ConsumerView(bool(loader.end_of_dataloader), getattr(loader, "remainder", -1))
    state._add_dataloader(view)
    return state, view


def _map_tensors(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return type(obj)({k: _map_tensors(v, fn) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _to_device(obj: Any, device: torch.device) -> Any:
    def move(t: torch.Tensor) -> torch.Tensor:
        if t.device == device:
            return t
        if t.device.type == "cpu" and not t.is_pinned():
            t = t.pin_memory()  # an asynchronous copy needs page-locked memory
        return t.to(device, non_blocking=True)

    return _map_tensors(obj, move)


class Prefetcher:
    """Iterate ``iterable`` with up to ``depth`` items prepared ahead in a background thread.

    ``iter()`` yields the same items in the same order; ``len()`` is the iterable's. On a CUDA
    ``device`` the items' tensors arrive on it (copied on a side stream); on a CPU they are
    passed through untouched. An exception raised while fetching is re-raised in the consumer at
    the position it happened; leaving the loop early stops the thread after its current fetch.
    Memory: up to ``depth`` extra batches in flight.
    """

    def __init__(self, iterable: Iterable, device: torch.device | str = "cpu", depth: int = 1) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.iterable = iterable
        self.device = torch.device(device)
        self.depth = depth

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]

    def _fetch(self, it: Iterator, stream) -> tuple[Any, bool | None, Any]:
        """The next item (on the device, for CUDA), its end-of-loader flag and a ready event."""
        event = None
        if stream is None:
            item = next(it)
        else:
            with torch.cuda.stream(stream):
                item = _to_device(next(it), self.device)
                event = torch.cuda.Event()
                event.record(stream)
        flag = getattr(self.iterable, "end_of_dataloader", None)
        return item, flag, event

    def __iter__(self) -> Iterator:
        it = iter(self.iterable)
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        try:
            first = self._fetch(it, stream)  # in this thread (see the module docstring)
        except StopIteration:
            return
        attached = _attach_view(self.iterable)
        ready: queue.Queue = queue.Queue()
        slots = threading.Semaphore(self.depth)
        stop = threading.Event()

        def work() -> None:
            try:
                while True:
                    slots.acquire()
                    if stop.is_set():
                        return
                    try:
                        got = self._fetch(it, stream)
                    except StopIteration:
                        ready.put((_END, None))
                        return
                    ready.put((_ITEM, got))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
                traceback.clear_frames(e.__traceback__)  # the lines stay; locals (the iterator) go
                ready.put((_ERROR, e))

        thread = threading.Thread(target=work, name="prefetch", daemon=True)
        thread.start()
        try:
            got = first
            while True:
                item, flag, event = got
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    # the allocator must not reuse these blocks until the consumer's stream is done
                    _map_tensors(item, lambda t, s=current: t.record_stream(s) if t.is_cuda else None)
                if attached is not None and flag is not None:
                    attached[1].end_of_dataloader = flag
                yield item
                del item, got
                kind, got = ready.get()
                slots.release()
                if kind == _END:
                    return
                if kind == _ERROR:
                    raise got
        finally:
            stop.set()
            slots.release()  # wake the thread if it waits for a slot
            thread.join()
            # drop the loader's iterator now: an exception's traceback would keep it (and a
            # DataLoader's worker processes) alive until exit, where their shutdown waits ~5 s
            it = None
            if attached is not None:
                attached[0]._remove_dataloader(attached[1])
