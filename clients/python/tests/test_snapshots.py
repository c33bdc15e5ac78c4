"""Snapshots and aggregate loads, against a real server."""

import random

import pytest

from highwater_client import InvalidArgument, NewEvent, NotFound

from conftest import query


def add(n):
    return NewEvent("Added", {"n": n})


def step(state, n):
    """Order-sensitive: a missing, repeated or reordered number changes the result."""
    return {"value": (state["value"] * 31 + n) % 1_000_003, "count": state["count"] + 1}


def fold(state, event):
    return step(state, event.json()["n"])


INITIAL = {"value": 0, "count": 0}


def test_save_snapshot_and_read_from_it(client):
    client.append("cart", [add(n) for n in range(6)])
    snapshot, events = client.read_from_snapshot("cart")
    assert snapshot is None
    assert [e.revision for e in events] == [0, 1, 2, 3, 4, 5]

    saved = client.save_snapshot("cart", 3, "Cart", {"total": 6})
    assert (saved.stream, saved.revision, saved.type, saved.content_type) == ("cart", 3, "Cart", "application/json")
    snapshot, events = client.read_from_snapshot("cart")
    assert snapshot is not None and snapshot.json() == {"total": 6}
    assert [e.revision for e in events] == [4, 5]
    # Bytes are stored as they are; not events, so the log has only the six.
    client.save_snapshot("cart", 5, "Raw", b"\x00\x01", content_type="application/octet-stream")
    snapshot, events = client.read_from_snapshot("cart")
    assert (snapshot.data, list(events)) == (b"\x00\x01", [])
    assert len(list(client.read_all())) == 6

    with pytest.raises(InvalidArgument) as beyond:
        client.save_snapshot("cart", 6, "Cart", {})
    assert "beyond the stream's last revision, 5" in str(beyond.value)
    with pytest.raises(NotFound):
        client.save_snapshot("nowhere", 0, "Cart", {})
    with pytest.raises(NotFound):
        client.read_from_snapshot("nowhere")


def test_load_aggregate_equals_the_full_fold_and_snapshots_every_n(client, server):
    rng = random.Random(17)
    for case in range(5):
        stream = f"aggregate-{case}"
        every = rng.randint(1, 8)
        expected = INITIAL
        for _ in range(rng.randint(1, 6)):
            batch = [rng.randint(-100, 100) for _ in range(rng.randint(1, 12))]
            client.append(stream, [add(n) for n in batch])
            for n in batch:
                expected = step(expected, n)
            loaded = client.load_aggregate(stream, fold, INITIAL, "Counter", snapshot_every=every)
            assert loaded.state == expected, (case, every)
            assert loaded.revision == expected["count"] - 1
            assert loaded.saved_snapshot == (loaded.events_folded >= every)
        # Every load after the first started from the snapshot the last one saved, if any.
        stored = query(server, "SELECT max(revision) FROM snapshots WHERE stream = %s", stream)[0][0]
        again = client.load_aggregate(stream, fold, INITIAL, "Counter", snapshot_every=every)
        assert again.snapshot_revision == stored
        assert again.state == expected


def test_a_snapshot_of_another_type_is_ignored(client):
    client.append("typed", [add(n) for n in (1, 2, 3)])
    client.save_snapshot("typed", 2, "OldShape", {"garbage": True})
    loaded = client.load_aggregate("typed", fold, INITIAL, "Counter")
    assert (loaded.snapshot_revision, loaded.events_folded, loaded.state["count"]) == (None, 3, 3)
    with pytest.raises(ValueError):
        client.load_aggregate("typed", fold, INITIAL, "Counter", snapshot_every=0)
