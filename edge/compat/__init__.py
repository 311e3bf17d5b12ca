"""Every workaround of aiocoap's and DTLSSocket's internals, in one place, each with tests."""
