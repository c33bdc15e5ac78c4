"""Mistakes the types must catch (tests/test_typing.py expects an error on each marked line)."""

from highwater_client import Client, NewEvent


def mistakes(client: Client) -> None:
    client.append("order-1", NewEvent("OrderPlaced"), expected_revision="nostream")  # error
    client.list_system_messages(kind="dead-letter")  # error
    actual: str = client.append("o", NewEvent("E")).last_revision  # error
