"""Calls that are safe to repeat are retried while the server is unreachable; others are not."""

import threading
import time

import pytest

from highwater_client import CallRetry, Client, NewEvent, Unavailable


def restart_later(server, delay: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), server.start()))
    thread.start()
    return thread


PATIENT = CallRetry(attempts=12, initial_backoff=0.2, max_backoff=1.0)


def test_an_append_with_ids_and_a_read_are_retried_until_the_server_is_back(server):
    with Client(server.address, timeout=5.0, call_retry=PATIENT) as client:
        client.append("retried", NewEvent("E", {"n": 0}))
        server.stop()
        back = restart_later(server, 0.5)
        try:
            result = client.append("retried", NewEvent("E", {"n": 1}))
        finally:
            back.join()
        assert result.first_revision == 1
        server.stop()
        back = restart_later(server, 0.5)
        try:
            assert [e.revision for e in client.read_stream("retried")] == [0, 1]
        finally:
            back.join()


def test_calls_unsafe_to_repeat_fail_at_once(server):
    slow = CallRetry(attempts=5, initial_backoff=3.0, max_backoff=3.0)
    with Client(server.address, timeout=5.0, call_retry=slow) as client:
        client.append("once", NewEvent("E", {}))
        server.stop()
        try:
            for call in (
                lambda: client.append("once", NewEvent("E", {}, id="")),  # no id: not recognisable
                lambda: client.delete_stream("once"),
            ):
                started = time.monotonic()
                with pytest.raises(Unavailable):
                    call()
                assert time.monotonic() - started < 2.5, "retried although unsafe to repeat"
            # A safe call does retry (and so takes at least one wait) before giving up.
            started = time.monotonic()
            with pytest.raises(Unavailable):
                Client(server.address, timeout=1.0, call_retry=CallRetry(attempts=2, initial_backoff=1.0)).append(
                    "once", NewEvent("E", {})
                )
            assert time.monotonic() - started >= 0.5
        finally:
            server.start()
    with pytest.raises(ValueError):
        Client(server.address, call_retry=CallRetry(attempts=0))
