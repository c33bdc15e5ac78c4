"""The examples, run against a real server: the SQLite consumer across crashes and restarts."""

import sqlite3
import threading
import time

import pytest

from conftest import load_example, query
from highwater_client import Client, NewEvent

sqlite_read_model = load_example("sqlite_read_model")


def added(sku, quantity):
    return NewEvent("ProductAdded", {"sku": sku, "quantity": quantity})


def removed(sku, quantity):
    return NewEvent("ProductRemoved", {"sku": sku, "quantity": quantity})


def sqlite_state(path, name="sqlite-carts"):
    conn = sqlite3.connect(path)
    try:
        return sqlite_read_model.read_carts(conn), sqlite_read_model.load_checkpoint(conn, name)
    finally:
        conn.close()


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_append_and_read_example(server, capsys):
    example = load_example("append_and_read")
    assert example.main(["--server", server.address, "--stream", "cart-example"]) == 0
    out = capsys.readouterr().out
    assert "appended revisions 0..1 at positions 1..2" in out
    assert 'conflict: wrong expected revision for stream "cart-example": expected 1, actual 2' in out
    assert "cart-example #2 (position 3) ProductRemoved {'sku': 'pear', 'quantity': 1}" in out
    with Client(server.address) as client:
        assert [e.type for e in client.read_stream("cart-example")] == [
            "ProductAdded", "ProductAdded", "ProductRemoved",
        ]


def test_rebuild_example(projection_server, capsys):
    example = load_example("rebuild")
    with Client(projection_server.address) as client:
        client.append("cart-1", added("apple", 2))
        # The server builds the projection's first version in the background after it starts.
        wait_for(lambda: client.get_projection("cart_summary").status == "active")
        version = client.get_projection("cart_summary").active_version
    assert example.main(["--server", projection_server.address, "cart_summary"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("STARTING")
    assert lines[-2].startswith("DONE")
    assert f"version {version + 1}  position 1/1" in lines[-2]
    assert lines[-1] == f"cart_summary: active version {version + 1}, active"
    assert example.main(["--server", projection_server.address, "no_such_projection"]) == 1
    assert capsys.readouterr().out == 'rebuild refused: NOT_FOUND: projection "no_such_projection" not found\n'


def test_sqlite_read_model_survives_crash_and_restarts(projection_server, tmp_path, monkeypatch):
    server = projection_server
    db = tmp_path / "carts.sqlite"
    client = Client(server.address)
    client.append("cart-1", [added("apple", 2), added("pear", 1)])  # positions 1, 2
    client.append("order-9", NewEvent("OrderPlaced", {}))  # 3, filtered out
    client.append("cart-2", added("plum", 5))  # 4
    client.append("cart-1", added("fig", 4))  # 5

    # 1. The consumer crashes while applying position 4, after its UPDATE but before the commit.
    original = sqlite_read_model.apply_event

    def crashing(conn, event):
        original(conn, event)
        if event.position == 4:
            raise RuntimeError("crash")

    monkeypatch.setattr(sqlite_read_model, "apply_event", crashing)
    with pytest.raises(RuntimeError, match="crash"):
        sqlite_read_model.CartReadModel(client, db).run(until_caught_up=True)
    monkeypatch.undo()
    carts, checkpoint = sqlite_state(db)
    assert carts == {"cart-1": (3, 2, False)}  # position 4 rolled back with its checkpoint
    assert checkpoint in (2, 3)

    # 2. Restarted, it follows the log live; the server restarts under it.
    model = sqlite_read_model.CartReadModel(client, db)
    thread = threading.Thread(target=model.run)
    thread.start()
    try:
        wait_for(lambda: sqlite_state(db)[1] == 5)
        server.stop()
        server.start()
        client.append("cart-1", [removed("pear", 1), NewEvent("CartCheckedOut", {})])  # 6, 7
        client.append("cart-3", added("kiwi", 1))  # 8
        wait_for(lambda: sqlite_state(db)[1] == 8)
    finally:
        model.stop()
        thread.join(10)
    assert not thread.is_alive()

    # 3. Events appended while no consumer runs are picked up by the next run.
    client.append("cart-3", added("kiwi", 2))  # 9
    applied = sqlite_read_model.CartReadModel(client, db).run(until_caught_up=True)
    assert applied == 1

    carts, checkpoint = sqlite_state(db)
    assert checkpoint == 9
    assert carts == {
        "cart-1": (6, 2, True),
        "cart-2": (5, 1, False),
        "cart-3": (3, 2, False),
    }
    # The server's own projection of the same events agrees.
    rows = query(server, "SELECT cart_id, item_count, line_count, checked_out FROM projections.cart_summary")
    assert {cart: (items, lines, done) for cart, items, lines, done in rows} == carts
    # The consumer reported its progress to the server under its subscription name.
    assert {s.name: s.position for s in client.list_subscriptions()} == {"sqlite-carts": 9}
    client.close()
