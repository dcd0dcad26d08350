"""The synchronous-prefix tracker: who sees what, and positions, checked by hand on small sequences."""

import numpy as np
import pytest

from aspd.pasta.sync import MAIN_STREAM, SyncError, SyncTracker, Tag


def _seen(t: SyncTracker, stream: int) -> list[int]:
    return [int(i) for i in np.flatnonzero(t.row(stream))]


def test_fork_sees_prefix_main_does_not_see_fork_until_join():
    t = SyncTracker()
    pos = [t.feed(MAIN_STREAM).position for _ in range(3)]  # prompt: slots 0-2
    pos.append(t.feed(MAIN_STREAM, Tag.SCOPE).position)  # 3
    pos.append(t.feed(MAIN_STREAM).position)  # 4 "a"
    fed = t.feed(MAIN_STREAM, Tag.PROMISE)  # 5
    f = fed.fork
    assert f is not None and fed.position == 5
    assert t.feed(f, Tag.ASYNC).position == 6  # the async span starts right after the promise...
    assert [t.feed(f).position for _ in range(2)] == [7, 8]
    assert t.feed(MAIN_STREAM).position == 6  # ...and so does the main stream: they share positions
    assert 6 not in _seen(t, MAIN_STREAM) and _seen(t, f) == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert not t.can_close(MAIN_STREAM)
    with pytest.raises(SyncError, match="before its async spans ended"):
        t.feed(MAIN_STREAM, Tag.SCOPE_END)
    t.feed(f, Tag.ASYNC_END)  # slot 10
    assert t.can_close(MAIN_STREAM)
    end = t.feed(MAIN_STREAM, Tag.SCOPE_END)  # joins: sees all 11 earlier slots
    assert end.position == 11 and _seen(t, MAIN_STREAM) == list(range(12))
    assert t.feed(MAIN_STREAM).position == 12


def test_promise_len_reserves_positions_and_join_never_goes_back():
    t = SyncTracker(promise_len=5)
    t.feed(MAIN_STREAM, Tag.SCOPE)  # pos 0
    fed = t.feed(MAIN_STREAM, Tag.PROMISE)  # pos 1; reserves 1..5
    assert t.feed(fed.fork, Tag.ASYNC).position == 2
    assert t.feed(MAIN_STREAM).position == 6
    t.feed(fed.fork, Tag.ASYNC_END)  # pos 3: the span was shorter than its reservation
    assert t.feed(MAIN_STREAM, Tag.SCOPE_END).position == 7  # last main position + 1, not the 5 tokens seen


def test_nested_scope_inside_async_and_promise_registers_to_home_scope():
    t = SyncTracker()
    t.feed(MAIN_STREAM, Tag.SCOPE)
    f = t.feed(MAIN_STREAM, Tag.PROMISE).fork
    t.feed(f, Tag.ASYNC)
    g = t.feed(f, Tag.PROMISE).fork  # no scope of its own: belongs to main's scope
    t.feed(g, Tag.ASYNC)
    t.feed(f, Tag.SCOPE)
    h = t.feed(f, Tag.PROMISE).fork
    t.feed(h, Tag.ASYNC)
    with pytest.raises(SyncError, match="unclosed"):
        t.feed(f, Tag.ASYNC_END)
    t.feed(h, Tag.ASYNC_END)
    t.feed(f, Tag.SCOPE_END)
    assert set(_seen(t, h)) <= set(_seen(t, f))
    t.feed(f, Tag.ASYNC_END)
    assert not t.can_close(MAIN_STREAM)  # g is still running
    t.feed(g, Tag.ASYNC_END)
    t.feed(MAIN_STREAM, Tag.SCOPE_END)
    assert _seen(t, MAIN_STREAM) == list(range(t.n))


@pytest.mark.parametrize("steps, message", [
    ([(0, Tag.PROMISE)], "outside any <scope>"),
    ([(0, Tag.SCOPE_END)], "without an open"),
    ([(0, Tag.ASYNC_END)], "outside an async span"),
    ([(0, Tag.ASYNC)], "only starts a stream"),
    ([(0, Tag.SCOPE), (0, Tag.PROMISE), (1, None)], "must start with <async>"),
])
def test_invalid_tags_are_refused(steps, message):
    t = SyncTracker()
    with pytest.raises(SyncError, match=message):
        for stream, tag in steps:
            t.feed(stream, tag)


def test_growth_keeps_views():
    t = SyncTracker(capacity=2)
    t.feed(MAIN_STREAM, Tag.SCOPE)
    f = t.feed(MAIN_STREAM, Tag.PROMISE).fork
    for _ in range(10):
        t.feed(MAIN_STREAM)
    t.feed(f, Tag.ASYNC)
    assert _seen(t, f) == [0, 1, 12]
