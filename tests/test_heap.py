"""A server settles its heap after a model loads (predict.settle_heap_after): the objects the
model holds are frozen out of the collector's sight, and garbage left in cycles is collected."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from appraiser import predict


@pytest.fixture
def restore_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settling_waits_for_the_load_then_collects_and_freezes(restore_gc) -> None:
    loading_done = threading.Event()
    loading = threading.Thread(target=loading_done.wait)
    loading.start()
    garbage = Cycle()
    gone = weakref.ref(garbage)
    gc.freeze()  # as a previous settle leaves it: the old champion's cycles among the frozen
    del garbage
    settling = threading.Thread(target=predict.settle_heap_after, args=([loading, None],))
    settling.start()
    settling.join(0.2)
    assert settling.is_alive()  # still waiting for the load's background work
    loading_done.set()
    settling.join(30)
    assert not settling.is_alive()
    assert gone() is None  # the unreachable cycle was collected at the settle, not kept frozen
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == predict.YOUNG_GENERATION


def test_a_server_settles_its_heap_after_loading_the_champion(trained, monkeypatch, restore_gc):
    from fastapi.testclient import TestClient

    from appraiser.api.app import create_app
    from appraiser.config import settings

    monkeypatch.setenv("APPRAISER_SETTLE_HEAP", "true")
    settings.cache_clear()
    gc.unfreeze()
    try:
        app = create_app()
        with TestClient(app):
            champions = app.state.ctx.champions
            assert champions.settling is not None
            champions.settling.join(60)
            assert gc.get_freeze_count() > 10_000  # the model, its collection, the libraries
            assert gc.get_threshold()[0] == predict.YOUNG_GENERATION
    finally:
        settings.cache_clear()
