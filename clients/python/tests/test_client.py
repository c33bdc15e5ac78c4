"""Every unary and reading call of the client, against a real server."""

import datetime

import grpc
import pytest

from highwater_client import (
    AlreadyExists,
    FailedPrecondition,
    HardDeleteResult,
    InvalidArgument,
    NewEvent,
    NotFound,
    WrongExpectedRevision,
)


def added(sku, quantity=1):
    return NewEvent("ProductAdded", {"sku": sku, "quantity": quantity})


def test_health_reports_serving(client):
    assert client.health() == "SERVING"
    assert client.health("highwater.v1.EventStoreService") == "SERVING"
    with pytest.raises(NotFound):
        client.health("no.such.Service")
    client.wait_until_ready(timeout=5)


def test_append_then_read_stream(client):
    events = [
        NewEvent("ProductAdded", {"sku": "apple", "quantity": 2}, metadata={"user": "ann"}),
        NewEvent("ProductAdded", {"sku": "pear", "quantity": 1}),
        NewEvent("Note", b"\x00\x01binary", content_type="application/octet-stream"),
    ]
    result = client.append("cart-1", events, expected_revision="no-stream")
    assert (result.first_revision, result.last_revision) == (0, 2)
    assert (result.first_position, result.last_position) == (1, 3)

    read = list(client.read_stream("cart-1"))
    assert [e.revision for e in read] == [0, 1, 2]
    assert [e.position for e in read] == [1, 2, 3]
    assert [e.id for e in read] == [e.id for e in events]
    assert all(e.stream == "cart-1" for e in read)
    assert read[0].type == "ProductAdded"
    assert read[0].json() == {"sku": "apple", "quantity": 2}
    assert read[0].data == b'{"sku":"apple","quantity":2}'
    assert read[0].content_type == "application/json"
    assert read[0].metadata == {"user": "ann"}
    assert read[2].data == b"\x00\x01binary"
    assert read[2].content_type == "application/octet-stream"
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - read[0].recorded_at).total_seconds()) < 60


def test_read_stream_directions_and_limits(client):
    client.append("s", [NewEvent("E", {"n": n}) for n in range(5)])
    assert [e.json()["n"] for e in client.read_stream("s", from_revision=2)] == [2, 3, 4]
    assert [e.revision for e in client.read_stream("s", backwards=True)] == [4, 3, 2, 1, 0]
    assert [e.revision for e in client.read_stream("s", backwards=True, limit=2)] == [4, 3]
    assert [e.revision for e in client.read_stream("s", from_revision=1, backwards=True)] == [1, 0]
    assert [e.revision for e in client.read_stream("s", from_revision=1, limit=2)] == [1, 2]


def test_read_missing_stream_raises_not_found(client):
    with pytest.raises(NotFound) as raised:
        list(client.read_stream("nobody-wrote-here"))
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert "nobody-wrote-here" in raised.value.message


def test_expected_revision_checks(client):
    client.append("cart-7", added("a"), expected_revision="no-stream")
    client.append("cart-7", added("b"), expected_revision=0)
    client.append("cart-7", added("c"), expected_revision="exists")
    client.append("cart-7", added("d"), expected_revision="any")
    client.append("cart-7", added("e"))  # default: any

    with pytest.raises(WrongExpectedRevision) as raised:
        client.append("cart-7", added("x"), expected_revision=1)
    error = raised.value
    assert error.code == grpc.StatusCode.ABORTED
    assert "wrong expected revision" in error.message
    assert error.reason == "WRONG_EXPECTED_REVISION"
    assert (error.stream, error.expected, error.actual) == ("cart-7", "1", 4)

    with pytest.raises(WrongExpectedRevision):
        client.append("cart-7", added("x"), expected_revision="no-stream")
    with pytest.raises(WrongExpectedRevision) as no_stream:
        client.append("cart-8", added("x"), expected_revision="exists")
    assert no_stream.value.actual is None
    with pytest.raises(WrongExpectedRevision):
        client.append("cart-8", added("x"), expected_revision=0)

    # Nothing of the refused appends was written.
    assert [e.json()["sku"] for e in client.read_stream("cart-7")] == ["a", "b", "c", "d", "e"]
    with pytest.raises(NotFound):
        list(client.read_stream("cart-8"))

    with pytest.raises(ValueError):
        client.append("cart-7", added("x"), expected_revision="sometimes")
    with pytest.raises(ValueError):
        client.append("cart-7", added("x"), expected_revision=-1)


def test_append_retry_with_same_events_is_idempotent(client):
    events = [added("a"), added("b")]
    first = client.append("cart-1", events, expected_revision="no-stream")
    # A retry (say, after a timeout) whose expected revision no longer holds still succeeds.
    again = client.append("cart-1", events, expected_revision="no-stream")
    assert again == first
    assert len(list(client.read_stream("cart-1"))) == 2


def test_bad_input_raises_invalid_argument(client):
    with pytest.raises(InvalidArgument) as raised:
        client.append("s", [added("a"), NewEvent("Broken", b"{not json")])
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in raised.value.field_violations] == ["events[1].data"]
    with pytest.raises(InvalidArgument):
        client.append("s", NewEvent("", {}))
    with pytest.raises(NotFound):
        list(client.read_stream("s"))  # the valid first event was not written either


def test_reused_event_id_raises_already_exists(client):
    event = added("a")
    client.append("cart-1", event)
    with pytest.raises(AlreadyExists) as raised:
        client.append("cart-2", event)
    assert raised.value.reason == "DUPLICATE_EVENT_ID"
    assert raised.value.metadata["id"] == event.id


def test_read_all(client):
    assert client.head_position() == 0
    assert list(client.read_all()) == []
    client.append("a-1", [NewEvent("E", {"n": 1}), NewEvent("E", {"n": 2})])
    client.append("b-1", [NewEvent("E", {"n": 3})])
    client.append("a-1", [NewEvent("E", {"n": 4})])

    everything = list(client.read_all())
    assert [e.position for e in everything] == [1, 2, 3, 4]
    assert [e.stream for e in everything] == ["a-1", "a-1", "b-1", "a-1"]
    assert [e.revision for e in everything] == [0, 1, 0, 2]
    assert [e.position for e in client.read_all(after_position=2)] == [3, 4]
    assert [e.position for e in client.read_all(after_position=1, limit=2)] == [2, 3]
    assert [e.position for e in client.read_all(backwards=True)] == [4, 3, 2, 1]
    assert [e.position for e in client.read_all(after_position=2, backwards=True)] == [2, 1]
    assert client.head_position() == 4


def test_checkpoints_of_durable_subscriptions(client):
    client.append("s", [NewEvent("E", {}) for _ in range(5)])
    assert client.save_checkpoint("billing", 3) == 3
    assert client.save_checkpoint("billing", 2) == 3  # never moves backwards
    assert client.save_checkpoint("audit", 5) == 5
    with pytest.raises(InvalidArgument):
        client.save_checkpoint("audit", 6)  # beyond the log's last position

    listed = {s.name: s for s in client.list_subscriptions()}
    assert sorted(listed) == ["audit", "billing"]
    assert (listed["billing"].position, listed["billing"].lag) == (3, 2)
    assert (listed["audit"].position, listed["audit"].lag) == (5, 0)

    client.delete_subscription("billing")
    assert [s.name for s in client.list_subscriptions()] == ["audit"]
    with pytest.raises(NotFound):
        client.delete_subscription("billing")


def test_delete_stream_hides_it_until_an_append_recreates_it(client):
    client.append("cart-1", [added("a"), added("b"), added("c")], expected_revision="no-stream")
    client.append("cart-2", added("z"))

    assert client.delete_stream("cart-1", expected_revision=2) == 2
    with pytest.raises(NotFound):
        list(client.read_stream("cart-1"))
    with pytest.raises(NotFound):
        client.delete_stream("cart-1")  # deleted already
    with pytest.raises(NotFound):
        client.delete_stream("nobody-wrote-here")
    # The events stay in the global log.
    assert [(e.stream, e.revision) for e in client.read_all()] == [
        ("cart-1", 0), ("cart-1", 1), ("cart-1", 2), ("cart-2", 0)
    ]

    # An append recreates the stream; its revisions continue after the deleted ones.
    result = client.append("cart-1", added("d"), expected_revision="no-stream")
    assert (result.first_revision, result.last_revision) == (3, 3)
    assert result.first_position == 5
    read = list(client.read_stream("cart-1"))
    assert [(e.revision, e.json()["sku"]) for e in read] == [(3, "d")]

    # Deleted again, with the other expectations.
    assert client.delete_stream("cart-1", expected_revision="exists") == 3
    client.append("cart-1", added("e"))
    assert client.delete_stream("cart-1") == 4  # default: any


def test_delete_stream_with_a_wrong_expectation_raises_and_deletes_nothing(client):
    client.append("cart-7", [added("a"), added("b")])

    with pytest.raises(WrongExpectedRevision) as raised:
        client.delete_stream("cart-7", expected_revision=0)
    error = raised.value
    assert error.code == grpc.StatusCode.ABORTED
    assert error.reason == "WRONG_EXPECTED_REVISION"
    assert (error.stream, error.expected, error.actual) == ("cart-7", "0", 1)
    with pytest.raises(WrongExpectedRevision):
        client.delete_stream("cart-7", expected_revision="no-stream")
    with pytest.raises(WrongExpectedRevision):
        client.hard_delete_stream("cart-7", expected_revision=5)
    assert [e.revision for e in client.read_stream("cart-7")] == [0, 1]  # nothing was deleted

    with pytest.raises(ValueError):
        client.delete_stream("cart-7", expected_revision="sometimes")
    with pytest.raises(ValueError):
        client.hard_delete_stream("cart-7", expected_revision=-1)
    with pytest.raises(TypeError):
        client.delete_stream("cart-7", expected_revision=True)


def test_hard_delete_stream_erases_it_for_good(client):
    client.append("cart-1", [added("a"), added("b")])
    client.append("cart-2", added("z"))
    assert client.delete_stream("cart-1") == 1  # a soft delete first: hidden events are erased too
    client.append("cart-1", added("c"))

    result = client.hard_delete_stream("cart-1", expected_revision=2)
    assert result == HardDeleteResult(deleted_revision=2, erased_events=3)
    # Gone from the global log too; the other stream's event keeps its position.
    assert [(e.stream, e.position) for e in client.read_all()] == [("cart-2", 3)]
    with pytest.raises(NotFound):
        list(client.read_stream("cart-1"))

    # Closed for good: appends and soft deletes fail.
    with pytest.raises(FailedPrecondition) as raised:
        client.append("cart-1", added("d"), expected_revision="no-stream")
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "hard-deleted" in raised.value.message
    with pytest.raises(FailedPrecondition):
        client.append("cart-1", added("d"))
    with pytest.raises(FailedPrecondition):
        client.delete_stream("cart-1")
    # A second hard delete (a retry) answers as the first one did.
    assert client.hard_delete_stream("cart-1") == HardDeleteResult(deleted_revision=2, erased_events=0)
    with pytest.raises(NotFound):
        client.hard_delete_stream("nobody-wrote-here")

    # Later appends elsewhere carry on from the head.
    assert client.append("cart-3", added("y")).first_position == 5
