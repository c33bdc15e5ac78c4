#!/usr/bin/env python3
"""Appends events to a cart stream with optimistic concurrency, then reads them back.

    python examples/append_and_read.py [--server 127.0.0.1:50051] [--stream cart-42]
"""

import argparse
import uuid

from highwater_client import Client, NewEvent, WrongExpectedRevision


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of the server")
    parser.add_argument("--stream", default=f"cart-{uuid.uuid4().hex[:8]}", help="a new stream")
    args = parser.parse_args(argv)

    with Client(args.server) as client:
        client.wait_until_ready(timeout=10)

        # "no-stream": fails if someone already created this cart.
        try:
            result = client.append(
                args.stream,
                [
                    NewEvent("ProductAdded", {"sku": "apple", "quantity": 2}),
                    NewEvent("ProductAdded", {"sku": "pear", "quantity": 1}, metadata={"user": "ann"}),
                ],
                expected_revision="no-stream",
            )
        except WrongExpectedRevision as e:
            print(f"{args.stream} already exists (revision {e.actual}): pick another --stream")
            return 1
        print(
            f"appended revisions {result.first_revision}..{result.last_revision} "
            f"at positions {result.first_position}..{result.last_position}"
        )

        # Append only if the stream is still at the revision we last saw...
        seen = result.last_revision
        client.append(
            args.stream, NewEvent("ProductRemoved", {"sku": "pear", "quantity": 1}), expected_revision=seen
        )
        # ...so a second writer holding the same, now stale, revision is refused.
        try:
            client.append(args.stream, NewEvent("CartCheckedOut", {}), expected_revision=seen)
        except WrongExpectedRevision as e:
            print(f"conflict: {e.message}")

        for event in client.read_stream(args.stream):
            print(f"{event.stream} #{event.revision} (position {event.position}) {event.type} {event.json()}")
        print(f"the store's last position: {client.head_position()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
