#!/usr/bin/env python3
"""Keeps a read model of shopping carts in SQLite, fed by a subscription to the Highwater log.

    python examples/sqlite_read_model.py [--server 127.0.0.1:50051] [--db carts.sqlite]

The consumer is idempotent: each event's change to the `carts` table and the consumer's
checkpoint (the event's position) are written in ONE SQLite transaction. After a crash, a restart
of the consumer or of the server, it subscribes again from the position stored in SQLite, so no
event is applied twice and none is missed, although the server itself only promises
at-least-once delivery across reconnects.

Events (on streams `cart-<id>`): ProductAdded {"sku", "quantity"}, ProductRemoved {"sku",
"quantity"}, CartCheckedOut {}.
"""

import argparse
import sqlite3
import threading

from highwater_client import Checkpoint, Client, HighwaterError

SCHEMA = """
CREATE TABLE IF NOT EXISTS carts (
    cart_id     TEXT PRIMARY KEY,
    item_count  INTEGER NOT NULL DEFAULT 0,
    line_count  INTEGER NOT NULL DEFAULT 0,
    checked_out INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS checkpoints (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
"""


def open_db(path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    return conn


def load_checkpoint(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT position FROM checkpoints WHERE name = ?", (name,)).fetchone()
    return row[0] if row else 0


def store_checkpoint(conn: sqlite3.Connection, name: str, position: int) -> None:
    conn.execute(
        "INSERT INTO checkpoints (name, position) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET position = max(position, excluded.position)",
        (name, position),
    )


def apply_event(conn: sqlite3.Connection, event) -> None:
    """The read model's reaction to one event (inside the caller's transaction)."""
    if event.type == "ProductAdded":
        conn.execute(
            "INSERT INTO carts (cart_id, item_count, line_count) VALUES (?, ?, 1)"
            " ON CONFLICT (cart_id) DO UPDATE SET item_count = item_count + excluded.item_count,"
            " line_count = line_count + 1",
            (event.stream, event.json()["quantity"]),
        )
    elif event.type == "ProductRemoved":
        conn.execute(
            "UPDATE carts SET item_count = item_count - ?, line_count = line_count - 1"
            " WHERE cart_id = ?",
            (event.json()["quantity"], event.stream),
        )
    elif event.type == "CartCheckedOut":
        conn.execute("UPDATE carts SET checked_out = 1 WHERE cart_id = ?", (event.stream,))


def read_carts(conn: sqlite3.Connection) -> dict:
    """cart_id -> (item_count, line_count, checked_out)."""
    rows = conn.execute("SELECT cart_id, item_count, line_count, checked_out FROM carts")
    return {cart: (items, lines, bool(done)) for cart, items, lines, done in rows}


class CartReadModel:
    """The consumer. run() follows the log until stop() (from another thread), or until it has
    caught up when asked to; each call resumes after the position stored in SQLite."""

    def __init__(self, client: Client, db_path, name: str = "sqlite-carts"):
        self.client = client
        self.db_path = db_path
        self.name = name
        self.applied = 0  # events applied by this object's runs
        self._subscription = None
        self._stopping = threading.Event()

    def run(self, until_caught_up: bool = False) -> int:
        """Applies events; returns how many. Errors (including the handlers') are raised."""
        conn = open_db(self.db_path)  # opened here: SQLite connections belong to one thread
        applied = 0
        try:
            start = load_checkpoint(conn, self.name)
            self._subscription = self.client.subscribe_all(
                after_position=start, stream_prefixes=["cart-"], checkpoints=True
            )
            if self._stopping.is_set():
                self._subscription.close()
            for item in self._subscription:
                if isinstance(item, Checkpoint):
                    # Events the filter hid: move the checkpoint past them too.
                    with conn:
                        store_checkpoint(conn, self.name, item.position)
                    self._report(item.position)
                    if until_caught_up and item.kind == "caught_up":
                        break
                    continue
                # The change and the checkpoint commit together, or roll back together.
                with conn:
                    apply_event(conn, item)
                    store_checkpoint(conn, self.name, item.position)
                applied += 1
                self.applied += 1
        finally:
            if self._subscription is not None:
                self._subscription.close()
            conn.close()
        return applied

    def stop(self) -> None:
        self._stopping.set()
        if self._subscription is not None:
            self._subscription.close()

    def _report(self, position: int) -> None:
        # Only for monitoring (ListSubscriptions shows the lag): SQLite's checkpoint is the truth.
        try:
            self.client.save_checkpoint(self.name, position)
        except HighwaterError:
            pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of the server")
    parser.add_argument("--db", default="carts.sqlite", help="the SQLite file of the read model")
    parser.add_argument(
        "--until-caught-up", action="store_true", help="stop once live instead of following"
    )
    args = parser.parse_args(argv)

    with Client(args.server) as client:
        model = CartReadModel(client, args.db)
        try:
            model.run(until_caught_up=args.until_caught_up)
        except KeyboardInterrupt:
            pass
        conn = open_db(args.db)
        print(f"applied {model.applied} events; checkpoint {load_checkpoint(conn, model.name)}")
        for cart, (items, lines, done) in sorted(read_carts(conn).items()):
            print(f"{cart}: {items} item(s) in {lines} line(s){' (checked out)' if done else ''}")
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
