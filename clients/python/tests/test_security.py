"""Bearer tokens and TLS against real servers started with --auth-file and --tls-cert/--tls-key."""

import hashlib
import secrets

import grpc
import pytest

from certs import CertificateAuthority
from conftest import run_server
from highwater_client import (
    Client,
    FailedPrecondition,
    HighwaterError,
    NewEvent,
    PermissionDenied,
    Phase,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    admin_pb2,
)

# One token per role, new for each run; the auth file holds only their SHA-256.
TOKENS = {role: f"hw_test_{role}_{secrets.token_hex(16)}" for role in ("read", "write", "admin")}
NAMES = {"read": "reader", "write": "writer", "admin": "operator"}


def write_auth_file(folder):
    entries = [
        f'[[token]]\nname = "{NAMES[role]}"\nrole = "{role}"\n'
        f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
        for role, token in TOKENS.items()
    ]
    path = folder / "auth.toml"
    path.write_text("\n".join(entries))
    return path


def write_pem(folder, name, data: bytes):
    path = folder / name
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def auth_server(tmp_path):
    """A server that needs tokens (and has the example projections, for the admin calls)."""
    auth_file = write_auth_file(tmp_path)
    yield from run_server(tmp_path, projections=True, args=["--auth-file", str(auth_file)])


def connect(server, role=None, **options):
    return Client(server.address, token=TOKENS[role] if role else None, timeout=10.0, **options)


def events(count, kind="E"):
    return [NewEvent(kind, {"n": n}) for n in range(count)]


# --- Tokens and roles ---------------------------------------------------------------------------


def test_without_a_valid_token_calls_are_unauthenticated(auth_server):
    with connect(auth_server) as client:
        assert client.health() == "SERVING"  # health needs no token
        with pytest.raises(Unauthenticated) as raised:
            list(client.read_all())
        error = raised.value
        assert isinstance(error, HighwaterError)
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
        assert "missing bearer token" in error.message
        assert len(error.request_id) == 36  # the server's UUID for the refused call, for its logs
        with pytest.raises(Unauthenticated):
            client.append("s", events(1))
        with pytest.raises(Unauthenticated):
            client.list_projections()

    with Client(auth_server.address, token="not-a-known-token", timeout=10.0) as client:
        with pytest.raises(Unauthenticated) as raised:
            list(client.read_stream("s"))
        assert "unknown bearer token" in raised.value.message

    with pytest.raises(ValueError):
        Client(auth_server.address, token="two\nlines")


def test_read_token_reads_but_cannot_write(auth_server):
    with connect(auth_server, "write") as writer:
        writer.append("cart-1", events(3), expected_revision="no-stream")
    with connect(auth_server, "read") as reader:
        assert [e.revision for e in reader.read_stream("cart-1")] == [0, 1, 2]
        assert [e.position for e in reader.read_all(backwards=True, limit=1)] == [3]
        assert reader.list_subscriptions() == []

        with pytest.raises(PermissionDenied) as raised:
            reader.append("cart-1", events(1))
        error = raised.value
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert '"reader"' in error.message and "needs write" in error.message
        assert error.request_id
        with pytest.raises(PermissionDenied):
            reader.save_checkpoint("billing", 1)
        with pytest.raises(PermissionDenied):
            reader.get_projection("cart_summary")
        assert len(list(reader.read_stream("cart-1"))) == 3  # nothing was written


def test_write_token_appends_and_manages_subscriptions_but_not_projections(auth_server):
    with connect(auth_server, "write") as writer:
        result = writer.append("cart-1", events(2), expected_revision="no-stream")
        assert (result.first_position, result.last_position) == (1, 2)
        assert writer.save_checkpoint("billing", 2) == 2
        assert [s.name for s in writer.list_subscriptions()] == ["billing"]
        writer.delete_subscription("billing")
        with pytest.raises(PermissionDenied) as raised:
            writer.list_projections()
        assert "needs admin" in raised.value.message
        with pytest.raises(PermissionDenied):
            list(writer.rebuild("cart_summary"))


def test_admin_token_lists_and_rebuilds_projections(auth_server):
    with connect(auth_server, "admin") as admin:
        admin.append("cart-1", [NewEvent("ProductAdded", {"sku": "apple", "quantity": 2})])
        assert "cart_summary" in [p.name for p in admin.list_projections()]
        assert admin.get_projection("cart_summary").name == "cart_summary"
        # A streamed admin call, and the generated stubs, carry the token too.
        assert list(admin.rebuild("cart_summary", in_place=True))[-1].phase == Phase.DONE
        response = admin.admin.ListProjections(admin_pb2.ListProjectionsRequest(), timeout=10)
        assert "cart_summary" in [p.name for p in response.projections]


def test_deletes_need_write_and_hard_deletes_need_admin(auth_server):
    with connect(auth_server, "write") as writer:
        writer.append("cart-1", events(2), expected_revision="no-stream")
        writer.append("cart-2", events(1), expected_revision="no-stream")
    with connect(auth_server, "read") as reader:
        with pytest.raises(PermissionDenied) as raised:
            reader.delete_stream("cart-1")
        assert "needs write" in raised.value.message
        with pytest.raises(PermissionDenied):
            reader.hard_delete_stream("cart-1")
    with connect(auth_server, "write") as writer:
        assert writer.delete_stream("cart-1", expected_revision=1) == 1
        with pytest.raises(PermissionDenied) as raised:
            writer.hard_delete_stream("cart-2")
        error = raised.value
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert '"writer"' in error.message and "needs admin" in error.message
    with connect(auth_server, "admin") as admin:
        # The soft delete erased nothing from the log.
        assert [e.stream for e in admin.read_all()] == ["cart-1", "cart-1", "cart-2"]
        result = admin.hard_delete_stream("cart-2", expected_revision=0)
        assert (result.deleted_revision, result.erased_events) == (0, 1)
        with pytest.raises(FailedPrecondition):
            admin.append("cart-2", events(1))


def test_subscriptions_with_a_token_survive_a_restart(auth_server):
    server = auth_server
    with connect(server, "write") as writer, connect(server, "read") as reader:
        writer.append("cart-1", events(2))
        fast = RetryPolicy(initial_backoff=0.05, max_backoff=0.5)
        with reader.subscribe_all(retry=fast) as everything, \
                reader.subscribe_stream("cart-1", retry=fast) as one_stream:
            assert [next(everything).position for _ in range(2)] == [1, 2]
            assert [next(one_stream).revision for _ in range(2)] == [0, 1]

            # The reconnects after a restart must present the token again.
            assert server.stop() == 0
            server.start()
            writer.append("cart-1", events(2))
            assert [next(everything).position for _ in range(2)] == [3, 4]
            assert [next(one_stream).revision for _ in range(2)] == [2, 3]
            assert everything.reconnects >= 1 and one_stream.reconnects >= 1

    # Refused subscriptions are not retried: the error comes out at once.
    with connect(server) as anonymous:
        with pytest.raises(Unauthenticated):
            next(anonymous.subscribe_all())
        with pytest.raises(Unauthenticated):
            next(anonymous.subscribe_stream("cart-1"))


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def ca():
    return CertificateAuthority()


def tls_args(tmp_path, ca):
    server = ca.issue("localhost", server=True)
    return [
        "--tls-cert", write_pem(tmp_path, "server.pem", server.cert),
        "--tls-key", write_pem(tmp_path, "server.key", server.key),
    ]


@pytest.fixture
def tls_server(tmp_path, ca):
    """A TLS-only server with a certificate for "localhost" signed by `ca`."""
    yield from run_server(
        tmp_path, args=tls_args(tmp_path, ca), host="localhost", client_options={"tls_ca": ca.cert}
    )


def test_tls_append_and_read(tls_server, ca):
    with Client(tls_server.address, tls_ca=ca.cert, timeout=10.0) as client:
        assert client.tls
        client.append("cart-1", events(3), expected_revision="no-stream")
        assert [e.revision for e in client.read_stream("cart-1")] == [0, 1, 2]
        with client.subscribe_all() as sub:
            assert [next(sub).position for _ in range(3)] == [1, 2, 3]
    # An https:// target means TLS too; the CA may be given as text.
    with Client(f"https://{tls_server.address}", tls_ca=ca.cert.decode(), timeout=10.0) as client:
        assert [e.position for e in client.read_all()] == [1, 2, 3]

    # A plaintext client, and one that does not trust the server's CA, cannot connect.
    with Client(tls_server.address, timeout=5.0) as plaintext:
        with pytest.raises(Unavailable):
            list(plaintext.read_all())
    with Client(tls_server.address, tls_ca=CertificateAuthority().cert, timeout=5.0) as untrusting:
        with pytest.raises(Unavailable):
            list(untrusting.read_all())


@pytest.fixture
def client_certificate(ca):
    """Client options with a certificate signed by `ca`, and the CA to trust."""
    pair = ca.issue("billing-service", server=False)
    return {"tls_ca": ca.cert, "tls_client_cert": pair.cert, "tls_client_key": pair.key}


@pytest.fixture
def mtls_server(tmp_path, ca, client_certificate):
    """A server that requires both a client certificate signed by `ca` and a token."""
    args = tls_args(tmp_path, ca) + [
        "--tls-client-ca", write_pem(tmp_path, "client-ca.pem", ca.cert),
        "--auth-file", str(write_auth_file(tmp_path)),
    ]
    yield from run_server(tmp_path, args=args, host="localhost", client_options=client_certificate)


def test_mutual_tls_with_a_token(mtls_server, ca, client_certificate):
    with connect(mtls_server, "write", **client_certificate) as client:
        client.append("cart-1", events(1))
        assert [e.position for e in client.read_all()] == [1]
    with connect(mtls_server, **client_certificate) as no_token:
        with pytest.raises(Unauthenticated):
            list(no_token.read_all())
    with Client(mtls_server.address, token=TOKENS["write"], tls_ca=ca.cert, timeout=5.0) as no_cert:
        with pytest.raises(Unavailable):
            list(no_cert.read_all())


def test_tls_options_are_checked():
    pem = CertificateAuthority().cert
    with pytest.raises(ValueError):
        Client("127.0.0.1:1", tls_client_cert=pem)  # without its key
    with pytest.raises(ValueError):
        Client("http://127.0.0.1:1", tls_ca=pem)  # plaintext target with TLS options
    with pytest.raises(ValueError):
        Client("127.0.0.1:1", tls_ca="/etc/ssl/ca.pem")  # a path, not PEM text
    with grpc.insecure_channel("127.0.0.1:1") as channel, pytest.raises(ValueError):
        Client("127.0.0.1:1", tls_ca=pem, channel=channel)
    with Client("127.0.0.1:1") as plain, Client("https://127.0.0.1:1") as system_roots:
        assert not plain.tls and system_roots.tls
