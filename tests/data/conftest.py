"""Fixtures of the dataset tests."""

import socket

import pytest


@pytest.fixture(scope="module")
def no_network():
    """Preparing and reading must never open a connection: any attempt fails the test.

    Module-scoped, for the module-scoped fixtures that prepare data: use it with
    `pytestmark = pytest.mark.usefixtures("no_network")`, which sets it up before them.
    """

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield
