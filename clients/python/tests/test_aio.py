"""The asyncio client against a real server: the same calls, errors and resuming subscriptions."""

import asyncio
import threading
import time

import pytest

from highwater_client import CallRetry, InvalidArgument, NewEvent, NotFound, WrongExpectedRevision
from highwater_client.aio import AsyncClient


def test_append_read_errors_and_snapshots(server):
    async def scenario():
        async with AsyncClient(server.address, timeout=10.0) as client:
            assert await client.health() == "SERVING"
            await client.wait_until_ready(5)
            first = await client.append("cart-1", [NewEvent("Added", {"n": n}) for n in range(3)], "no-stream")
            assert (first.first_revision, first.last_position) == (0, 3)
            with pytest.raises(WrongExpectedRevision) as conflict:
                await client.append("cart-1", NewEvent("Added", {"n": 9}), expected_revision=0)
            assert conflict.value.actual == 2
            assert [e.json()["n"] async for e in client.read_stream("cart-1")] == [0, 1, 2]
            assert [e.revision async for e in client.read_stream("cart-1", backwards=True, limit=2)] == [2, 1]
            assert [e.position async for e in client.read_all()] == [1, 2, 3]
            assert await client.head_position() == 3
            with pytest.raises(NotFound):
                [e async for e in client.read_stream("missing")]

            await client.save_snapshot("cart-1", 1, "Sum", {"sum": 1})
            snapshot, events = await client.read_from_snapshot("cart-1")
            assert (snapshot.revision, [e.revision for e in events]) == (1, [2])
            loaded = await client.load_aggregate(
                "cart-1", lambda s, e: {"sum": s["sum"] + e.json()["n"]}, {"sum": 0}, "Sum", snapshot_every=1
            )
            assert (loaded.state, loaded.snapshot_revision, loaded.saved_snapshot) == ({"sum": 3}, 1, True)

            assert await client.save_checkpoint("reader", 2) == 2
            assert [(s.name, s.position) for s in await client.list_subscriptions()] == [("reader", 2)]
            await client.delete_subscription("reader")
            assert await client.delete_stream("cart-1") == 2
            with pytest.raises(NotFound):
                await client.delete_stream("cart-1")

    asyncio.run(scenario())


def test_a_subscription_resumes_across_a_server_restart_with_each_event_once(server):
    async def scenario():
        async with AsyncClient(server.address, timeout=10.0, call_retry=CallRetry(attempts=12, initial_backoff=0.2)) as client:
            await client.append("live", [NewEvent("E", {"n": n}) for n in range(5)])
            seen = []
            async with client.subscribe_all() as subscription:
                async for event in subscription:
                    seen.append(event.position)
                    if len(seen) == 5:
                        # Restart the server under the subscription, then write five more.
                        await asyncio.to_thread(server.stop)
                        await asyncio.to_thread(server.start)
                        await client.append("live", [NewEvent("E", {"n": n}) for n in range(5, 10)])
                    if len(seen) == 10:
                        break
                assert subscription.reconnects >= 1
            assert seen == list(range(1, 11))

    asyncio.run(scenario())


def test_an_append_with_ids_is_retried_while_the_server_restarts(server):
    async def scenario():
        async with AsyncClient(server.address, timeout=5.0, call_retry=CallRetry(attempts=12, initial_backoff=0.2, max_backoff=1.0)) as client:
            await client.append("retried", NewEvent("E", {}))
            server.stop()
            back = threading.Thread(target=lambda: (time.sleep(0.5), server.start()))
            back.start()
            try:
                result = await client.append("retried", NewEvent("E", {}))
            finally:
                back.join()
            assert result.first_revision == 1

    asyncio.run(scenario())


def test_a_timed_out_wait_loses_nothing_and_close_from_another_task_ends_the_loop(server):
    async def scenario():
        async with AsyncClient(server.address, timeout=10.0) as client:
            await client.append("waited", NewEvent("E", {"n": 0}))
            subscription = client.subscribe_all()
            first = await subscription.__anext__()
            assert first.position == 1
            # Nothing new: the wait times out, and the subscription goes on afterwards.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(subscription.__anext__(), 0.5)
            await client.append("waited", NewEvent("E", {"n": 1}))
            second = await asyncio.wait_for(subscription.__anext__(), 10)
            assert second.position == 2

            # A consumer loop in one task, close() from another: the loop ends cleanly.
            received = []

            async def consume():
                async for event in subscription:
                    received.append(event.position)

            consumer = asyncio.create_task(consume())
            await client.append("waited", NewEvent("E", {"n": 2}))
            for _ in range(100):
                if received:
                    break
                await asyncio.sleep(0.05)
            await subscription.close()
            await asyncio.wait_for(consumer, 10)
            assert received == [3]

    asyncio.run(scenario())


def test_stream_subscriptions_and_the_admin_calls(projection_server):
    server = projection_server

    async def scenario():
        async with AsyncClient(server.address, timeout=10.0) as client:
            await client.append("cart-9", NewEvent("ProductAdded", {"sku": "a", "quantity": 1}))
            async with client.subscribe_stream("cart-9") as subscription:
                first = await asyncio.wait_for(subscription.__anext__(), 10)
                await client.append("cart-9", NewEvent("ProductAdded", {"sku": "b", "quantity": 2}))
                second = await asyncio.wait_for(subscription.__anext__(), 10)
                assert (first.revision, second.revision, subscription.next_revision) == (0, 1, 2)
            assert [p.name for p in await client.list_projections()] == ["cart_summary"]
            phases = [progress.phase async for progress in client.rebuild("cart_summary")]
            assert phases[-1].name == "DONE"
            assert (await client.get_projection("cart_summary")).active_version == 2
            assert await client.list_system_messages(projection="cart_summary") == []
            retried = await client.retry_dead_letters("cart_summary")
            assert (retried.applied, retried.still_failing) == (0, 0)
            with pytest.raises(InvalidArgument):
                await client.register_projection("name = ")

    asyncio.run(scenario())
