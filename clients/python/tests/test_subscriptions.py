"""Subscriptions: starts, filters, stream subscriptions, and resuming across a server restart."""

import signal
import threading
import time

import pytest

from highwater_client import Checkpoint, Client, NewEvent, RetryPolicy, Unavailable


def take(subscription, count):
    """The next `count` events of a subscription (skipping Checkpoint values)."""
    events = []
    for item in subscription:
        if not isinstance(item, Checkpoint):
            events.append(item)
            if len(events) == count:
                break
    return events


def items_until_caught_up(subscription):
    items = []
    for item in subscription:
        items.append(item)
        if isinstance(item, Checkpoint) and item.kind == "caught_up":
            return items
    raise AssertionError("subscription ended before catching up")


def test_subscribe_all_reads_history_then_live(client):
    client.append("s-1", [NewEvent("E", {"n": n}) for n in range(3)])
    with client.subscribe_all(checkpoints=True) as sub:
        history = items_until_caught_up(sub)
        events = [i for i in history if not isinstance(i, Checkpoint)]
        assert [e.position for e in events] == [1, 2, 3]
        assert history[-1] == Checkpoint(3, "caught_up")
        assert sub.caught_up and sub.position == 3

        client.append("s-2", [NewEvent("E", {"n": 3}), NewEvent("E", {"n": 4})])
        live = take(sub, 2)
        assert [(e.stream, e.position, e.json()["n"]) for e in live] == [("s-2", 4, 3), ("s-2", 5, 4)]


def test_subscribe_all_after_position_and_from_end(client):
    client.append("s", [NewEvent("E", {}) for _ in range(4)])
    with client.subscribe_all(after_position=2) as sub:
        assert [e.position for e in take(sub, 2)] == [3, 4]
    with client.subscribe_all(from_end=True) as sub:
        client.append("s", NewEvent("E", {"late": True}))
        event = next(sub)
        assert (event.position, event.json()) == (5, {"late": True})
    with pytest.raises(ValueError):
        client.subscribe_all("name", after_position=1)


def test_durable_subscription_starts_after_its_stored_checkpoint(client):
    client.append("s", [NewEvent("E", {}) for _ in range(5)])
    client.save_checkpoint("billing", 3)
    with client.subscribe_all("billing") as sub:
        assert [e.position for e in take(sub, 2)] == [4, 5]
    # A durable subscription that does not exist starts at 0, and is created.
    with client.subscribe_all("fresh") as sub:
        assert next(sub).position == 1
    assert {s.name: s.position for s in client.list_subscriptions()} == {"billing": 3, "fresh": 0}


def test_filters_deliver_matching_events_and_still_advance(client):
    client.append("cart-1", [NewEvent("ProductAdded", {}), NewEvent("CartCheckedOut", {})])
    client.append("order-1", [NewEvent("ProductAdded", {})])
    client.append("cart-2", [NewEvent("ProductAdded", {})])

    with client.subscribe_all(stream_prefixes=["cart-"], checkpoints=True) as sub:
        events = [i for i in items_until_caught_up(sub) if not isinstance(i, Checkpoint)]
        assert [(e.stream, e.type) for e in events] == [
            ("cart-1", "ProductAdded"), ("cart-1", "CartCheckedOut"), ("cart-2", "ProductAdded"),
        ]
    with client.subscribe_all(event_types=["CartCheckedOut"], checkpoints=True) as sub:
        history = items_until_caught_up(sub)
        assert [i.position for i in history if not isinstance(i, Checkpoint)] == [2]
    # A filter matching nothing still reports how far it has got.
    with client.subscribe_all(stream_prefixes=["nothing-"], checkpoints=True) as sub:
        assert items_until_caught_up(sub)[-1] == Checkpoint(4, "caught_up")
        assert sub.position == 4


def test_subscribe_stream(client):
    client.append("cart-1", [NewEvent("E", {"n": 0}), NewEvent("E", {"n": 1})])
    client.append("cart-2", NewEvent("E", {"n": 99}))
    with client.subscribe_stream("cart-1", from_revision=1) as sub:
        assert [e.json()["n"] for e in take(sub, 1)] == [1]
        client.append("cart-2", NewEvent("E", {"n": 98}))
        client.append("cart-1", NewEvent("E", {"n": 2}))
        event = next(sub)
        assert (event.stream, event.revision, event.json()) == ("cart-1", 2, {"n": 2})
        assert sub.next_revision == 3
    # The stream need not exist yet.
    with client.subscribe_stream("cart-3") as sub:
        client.append("cart-3", NewEvent("E", {"n": 3}))
        assert next(sub).revision == 0


def test_close_from_another_thread_ends_the_iteration(client):
    sub = client.subscribe_all()
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(list(sub)))
    thread.start()
    time.sleep(0.3)  # the thread is now waiting for live events
    sub.close()
    thread.join(10)
    assert not thread.is_alive()
    assert outcome == [[]]


def test_gives_up_after_the_retry_limit(server):
    server.stop()
    with Client(server.address) as client:
        sub = client.subscribe_all(retry=RetryPolicy(give_up_after=1.0, max_backoff=0.2))
        started = time.monotonic()
        with pytest.raises(Unavailable):
            next(sub)
        assert 1.0 <= time.monotonic() - started < 10
        assert sub.reconnects >= 2
    server.start()  # for the fixture's clean shutdown


@pytest.mark.parametrize(
    "start, stop_signal",
    [("durable", signal.SIGTERM), ("position", signal.SIGKILL)],
    ids=["durable-sigterm", "position-sigkill"],
)
def test_subscription_resumes_across_server_restart(server, client, start, stop_signal, caplog):
    """The server stops while the subscriber iterates, first in catch-up and then live, and comes
    back on the same port and database: every event arrives exactly once, in order."""
    before, after = 300, 50
    for batch in range(before // 50):
        client.append(f"s-{batch}", [NewEvent("E", {"n": batch * 50 + i}) for i in range(50)])

    sub = (
        client.subscribe_all("resumer", checkpoint_interval=10)
        if start == "durable"
        else client.subscribe_all(after_position=0)
    )
    received, saved, errors = [], [], []

    def consume():
        try:
            for event in sub:
                received.append(event.position)
                time.sleep(0.005)  # a slow consumer: the stop lands in the middle of the history
                if start == "durable" and event.position % 20 == 0:
                    try:
                        saved.append(client.save_checkpoint("resumer", event.position))
                    except Unavailable:
                        pass  # the server is down: a later save carries this one
                if len(received) == before + after:
                    return
        except Exception as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        deadline = time.monotonic() + 30
        while len(received) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        if stop_signal == signal.SIGTERM:
            assert server.stop() == 0
        else:
            server.process.kill()
            server.process.wait()
        got_before_stop = len(received)
        assert 0 < got_before_stop < before, "the server should stop in the middle of the history"

        time.sleep(0.5)  # down for a while: the subscriber's reconnects fail meanwhile
        server.start()
        # Wait for the subscriber to be live again, then append while it listens.
        deadline = time.monotonic() + 30
        while not (sub.caught_up and len(received) == before) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sub.caught_up and len(received) == before
        for i in range(after):
            client.append("after-restart", NewEvent("E", {"n": before + i}))
        consumer.join(60)
        assert not consumer.is_alive()
    finally:
        sub.close()
        consumer.join(10)

    assert errors == []
    assert received == list(range(1, before + after + 1))  # nothing lost, nothing repeated
    # ...and the server did not send anything twice either (the client would have dropped it).
    assert not [r for r in caplog.records if "repeated event" in r.getMessage()]
    assert sub.reconnects >= 1

    if start == "durable":
        # The checkpoint stored on the server is the last save; subscribing by name again resumes
        # right after it.
        last_saved = max(saved)
        assert last_saved == before + after - (before + after) % 20
        assert {s.name: s.position for s in client.list_subscriptions()} == {"resumer": last_saved}
        with client.subscribe_all("resumer") as again:
            assert [e.position for e in take(again, 2)] == [last_saved + 1, last_saved + 2]
