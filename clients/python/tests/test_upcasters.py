"""Upcasters through the clients, against a real server."""

import asyncio

import pytest

from highwater_client import FailedPrecondition, InvalidArgument, NewEvent, NotFound
from highwater_client.aio import AsyncClient

V1_TO_V2 = """
name = "order_v1"
event_type = "Order"
from_version = "1"
to_version = "2"
data = "($data - 'amount') || jsonb_build_object('total', $data->'amount')"
"""


def test_reads_are_upcast_unless_original_is_asked_for(client):
    stored = client.register_upcaster(V1_TO_V2)
    assert (stored.name, stored.to_type) == ("order_v1", "Order")
    client.append("order-1", [NewEvent("Order", {"amount": 5}, metadata={"schema_version": "1"})])

    [upcast] = list(client.read_stream("order-1"))
    assert upcast.json() == {"total": 5} and upcast.metadata["schema_version"] == "2"
    [original] = list(client.read_stream("order-1", original=True))
    assert original.json() == {"amount": 5} and original.metadata["schema_version"] == "1"
    assert [e.json() for e in client.read_all()] == [{"total": 5}]
    assert [e.json() for e in client.read_all(original=True)] == [{"amount": 5}]
    assert [u.definition.name for u in client.list_upcasters()] == ["order_v1"]
    for original, expected in ((False, {"total": 5}), (True, {"amount": 5})):
        for subscription in (
            client.subscribe_all(original=original),
            client.subscribe_stream("order-1", original=original),
        ):
            assert next(iter(subscription)).json() == expected
            subscription.close()

    with pytest.raises(InvalidArgument) as circle:
        client.register_upcaster(V1_TO_V2.replace("order_v1", "back").replace('"1"', '"x"').replace('"2"', '"1"').replace('"x"', '"2"'))
    assert "circle" in str(circle.value)

    client.delete_upcaster("order_v1")
    with pytest.raises(NotFound):
        client.delete_upcaster("order_v1")


def test_a_failing_upcaster_is_failed_precondition_and_async_reads_are_upcast(client, server):
    client.register_upcaster(
        'name = "strict"\nevent_type = "Price"\nto_type = "PriceV2"\n'
        "data = \"jsonb_build_object('cents', (($data->>'amount')::numeric * 100)::bigint)\"\n"
    )
    client.append("price-1", [NewEvent("Price", {"amount": 2.5})])
    client.append("price-2", [NewEvent("Price", {"amount": "many"})])

    async def scenario():
        async with AsyncClient(server.address, timeout=10.0) as aclient:
            events = [e async for e in aclient.read_stream("price-1")]
            assert [(e.type, e.json()) for e in events] == [("PriceV2", {"cents": 250})]
            originals = [e async for e in aclient.read_all(original=True)]
            assert [e.type for e in originals] == ["Price", "Price"]
            assert [u.definition.name for u in await aclient.list_upcasters()] == ["strict"]
            for original, expected in ((False, "PriceV2"), (True, "Price")):
                subscription = aclient.subscribe_stream("price-1", original=original)
                async for event in subscription:
                    assert event.type == expected
                    break
                await subscription.close()

    asyncio.run(scenario())
    with pytest.raises(FailedPrecondition) as failed:
        list(client.read_stream("price-2"))
    assert "upcaster strict" in str(failed.value)
