"""Projections through the admin calls: rebuilds, registration, dead letters."""

import time

import pytest

from conftest import query
from highwater_client import Client, InvalidArgument, NewEvent, NotFound, Phase, admin_pb2

SKU_TOTALS = """
name = "sku_totals"
version = 1
mode = "inline"
on_error = "skip"
setup = "CREATE TABLE {{table}} (sku text PRIMARY KEY, quantity integer NOT NULL)"

[handlers]
StockCounted = \"\"\"
INSERT INTO {{table}} AS t (sku, quantity) VALUES ($data->>'sku', %s)
ON CONFLICT (sku) DO UPDATE SET quantity = t.quantity + EXCLUDED.quantity
\"\"\"
"""
STRICT = "($data->>'quantity')::int"
LENIENT = "CASE WHEN $data->>'quantity' ~ '^[0-9]+$' THEN ($data->>'quantity')::int ELSE 0 END"


def added(sku, quantity):
    return NewEvent("ProductAdded", {"sku": sku, "quantity": quantity})


def wait_until_active(client, name, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        info = client.get_projection(name)
        if info.status == "active" and info.building_version == 0:
            return info
        assert time.monotonic() < deadline, f"{name} not active: {info}"
        time.sleep(0.05)


@pytest.fixture
def client(projection_server):
    with Client(projection_server.address, timeout=10.0) as c:
        wait_until_active(c, "cart_summary")
        yield c


def carts(server):
    rows = query(server, "SELECT cart_id, item_count FROM projections.cart_summary")
    return dict(rows)


def test_rebuild_blue_green_reports_progress_until_done(projection_server, client):
    for cart in range(20):
        client.append(f"cart-{cart}", [added("apple", 2), added("pear", cart)])
    before = client.get_projection("cart_summary")

    progress = list(client.rebuild("cart_summary"))
    phases = [p.phase for p in progress]
    assert phases[0] == Phase.STARTING
    assert phases[-1] == Phase.DONE
    assert phases == sorted(phases), "phases go forwards"
    assert Phase.BACKFILLING in phases
    done = progress[-1]
    assert (done.version, done.position, done.head, done.error) == (before.active_version + 1, 40, 40, "")
    assert done.node

    after = client.get_projection("cart_summary")
    assert (after.active_version, after.status, after.applied_position) == (done.version, "active", 40)
    assert carts(projection_server) == {f"cart-{c}": 2 + c for c in range(20)}


def test_rebuild_in_place(projection_server, client):
    client.append("cart-1", [added("apple", 3)])
    version = client.get_projection("cart_summary").active_version
    progress = list(client.rebuild("cart_summary", in_place=True))
    assert progress[-1].phase == Phase.DONE
    assert progress[-1].version == version  # the same version's table, emptied and replayed
    assert client.get_projection("cart_summary").active_version == version
    assert carts(projection_server) == {"cart-1": 3}


def test_rebuild_and_get_unknown_projection_raise_not_found(client):
    with pytest.raises(NotFound):
        list(client.rebuild("no_such_projection"))
    with pytest.raises(NotFound):
        client.get_projection("no_such_projection")


def test_register_projection_dead_letters_and_retry(projection_server, client):
    info = client.register_projection(SKU_TOTALS % STRICT)
    assert (info.name, info.mode) == ("sku_totals", "inline")
    wait_until_active(client, "sku_totals")
    assert sorted(p.name for p in client.list_projections()) == ["cart_summary", "sku_totals"]

    # StockCounted, which cart_summary (failing on errors) does not handle.
    counted = [NewEvent("StockCounted", {"sku": s, "quantity": q}) for s, q in
               [("apple", 2), ("apple", "lots"), ("pear", 1)]]
    client.append("shelf-1", counted)
    totals = dict(query(projection_server, "SELECT sku, quantity FROM projections.sku_totals"))
    assert totals == {"apple": 2, "pear": 1}  # the bad event was skipped, the append committed

    messages = client.list_system_messages(projection="sku_totals")
    assert [(m.kind, m.position, m.archived) for m in messages] == [("dead_letter", 2, False)]
    assert "integer" in messages[0].reason
    assert client.get_projection("sku_totals").dead_letters == 1

    assert (client.retry_dead_letters("sku_totals").still_failing,) == (1,)

    # The same version and setup with a fixed handler updates it in place; the retry then works.
    client.register_projection(SKU_TOTALS % LENIENT)
    result = client.retry_dead_letters("sku_totals")
    assert (result.applied, result.still_failing) == (1, 0)
    assert client.list_system_messages(projection="sku_totals") == []
    archived = client.list_system_messages(projection="sku_totals", include_archived=True)
    assert [(m.kind, m.archived) for m in archived] == [("dead_letter", True)]
    assert client.get_projection("sku_totals").dead_letters == 0


def test_register_structured_definition_and_refusals(client):
    definition = admin_pb2.ProjectionDefinition(
        name="type_counts",
        mode=admin_pb2.PROJECTION_MODE_ASYNC,
        setup="CREATE TABLE {{table}} (type text PRIMARY KEY, n bigint NOT NULL)",
        handlers={
            "ProductAdded": "INSERT INTO {{table}} AS t VALUES ($type, 1)"
            " ON CONFLICT (type) DO UPDATE SET n = t.n + 1",
        },
    )
    info = client.register_projection(definition=definition)
    assert (info.name, info.mode) == ("type_counts", "async")

    with pytest.raises(InvalidArgument):
        client.register_projection('name = "broken"\nthis is not toml')
    bad = admin_pb2.ProjectionDefinition(
        name="bad_handler",
        setup="CREATE TABLE {{table}} (id text PRIMARY KEY)",
        handlers={"ProductAdded": "INSERT INTO {{table}} (no_such_column) VALUES ($id)"},
    )
    with pytest.raises(InvalidArgument) as raised:
        client.register_projection(definition=bad)
    assert "no_such_column" in raised.value.message
    with pytest.raises(ValueError):
        client.register_projection()
