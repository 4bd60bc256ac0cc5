"""The listening socket `tlearn serve` and `tlearn label` hand to uvicorn."""
import asyncio
import socket

from tlearn.serve.server import bind


def test_accepted_connections_have_tcp_nodelay():
    """asyncio turns Nagle's algorithm off only on connections of a socket made with IPPROTO_TCP; with
    it on, each small response waited for the client's delayed ACK (about 40 ms a request)."""
    async def nodelay_of_accepted() -> int:
        accepted = asyncio.get_running_loop().create_future()

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport):
                option = transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                accepted.set_result(option)
                transport.close()

        with bind("127.0.0.1", 0) as sock:
            server = await asyncio.get_running_loop().create_server(Protocol, sock=sock)
            async with server:
                _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
                option = await asyncio.wait_for(accepted, 10)
                writer.close()
        return option

    assert asyncio.run(nodelay_of_accepted()) != 0
