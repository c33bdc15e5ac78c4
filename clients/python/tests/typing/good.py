"""Code a user writes: it must type-check under mypy --strict (tests/test_typing.py)."""

from highwater_client import Client, ExpectedRevision, NewEvent, WrongExpectedRevision


def place(client: Client, expected: ExpectedRevision) -> int:
    try:
        result = client.append("order-1", NewEvent("OrderPlaced", {"total": 10}), expected_revision=expected)
    except WrongExpectedRevision as conflict:
        actual: "int | None" = conflict.actual
        return -1 if actual is None else actual
    return result.last_revision


def states(client: Client) -> None:
    for expected in ("any", "no-stream", "exists", 3):
        place(client, expected)
    client.list_system_messages(kind="dead_letter")
