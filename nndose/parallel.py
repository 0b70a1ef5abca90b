"""One way to run per-case work over a process pool with a progress bar."""
from __future__ import annotations

from multiprocessing import get_context
from typing import Callable, Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def map_with_progress(func: Callable[[T], R], items: Iterable[T], num_processes: int, desc: str,
                      progress: bool = True, unit: str = "case") -> list[R]:
    """func over items (in input order) with `num_processes` spawned workers; errors propagate."""
    items = list(items)
    results: list = [None] * len(items)
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress) as bar:
        try:
            _run(func, items, num_processes, bar, results)
        except BaseException:
            bar.leave = False  # an error message follows: take the bar off the line
            raise
    return results


def _run(func, items, num_processes, bar, results) -> None:
    if num_processes > 1 and len(items) > 1:
        with get_context("spawn").Pool(min(num_processes, len(items))) as pool:
            for i, r in pool.imap_unordered(_Indexed(func), enumerate(items)):
                results[i] = r
                bar.update()
    else:
        for i, item in enumerate(items):
            results[i] = func(item)
            bar.update()


class _Indexed:
    def __init__(self, func):
        self.func = func

    def __call__(self, pair):
        i, item = pair
        return i, self.func(item)
