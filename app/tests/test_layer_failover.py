"""The chat's pub/sub layer (chat.layers) through Redis Sentinel, when the master dies.

A master, a replica and three Sentinels of the test's own, every one of them behind the same password (as
the redis role deploys them), and the layer configured as the settings build it from REDIS_SENTINELS,
REDIS_SENTINEL_MASTER and REDIS_PASSWORD. When the master is killed or falls silent, Sentinel promotes the
replica; the layer's pub/sub connection asks Sentinel again on its reconnect, so it subscribes on the new
master, tells every local channel to resync, and live messages flow again.
"""

import asyncio
import shutil
import signal
import subprocess
import time

import pytest
import redis

from chat.layers import LeanRedisPubSubChannelLayer
from chatsite.settings import channel_layer_from_env, sentinel_host

from .conftest import free_port, wait_until

PASSWORD = "failover-test-password-0123456789"
MASTER = "chat"


def start(arguments, directory):
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed (apt-get install redis-server)"
    return subprocess.Popen([server, *arguments, "--dir", str(directory)], stdout=subprocess.DEVNULL)


@pytest.fixture
def sentinel_site(tmp_path):
    """(sentinel addresses, master port, replica port, processes by name)."""
    ports = {name: free_port() for name in ("master", "replica", "s1", "s2", "s3")}
    processes = {}
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--requirepass", PASSWORD,
              "--masterauth", PASSWORD]
    try:
        processes["master"] = start(["--port", str(ports["master"]), *common], tmp_path)
        processes["replica"] = start(
            ["--port", str(ports["replica"]), *common, "--replicaof", "127.0.0.1", str(ports["master"])], tmp_path
        )
        for name in ("master", "replica"):
            client = redis.Redis(port=ports[name], password=PASSWORD)
            wait_until(client.ping)
        replica = redis.Redis(port=ports["replica"], password=PASSWORD)
        wait_until(lambda: replica.info("replication")["master_link_status"] == "up")
        for name in ("s1", "s2", "s3"):
            # Sentinel rewrites its file: each gets one of its own.
            config = tmp_path / f"{name}.conf"
            config.write_text(
                f"port {ports[name]}\nbind 127.0.0.1\nrequirepass {PASSWORD}\n"
                f"sentinel sentinel-pass {PASSWORD}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {ports['master']} 2\n"
                f"sentinel auth-pass {MASTER} {PASSWORD}\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
            )
            processes[name] = start([str(config), "--sentinel"], tmp_path)
        for name in ("s1", "s2", "s3"):
            sentinel = redis.Redis(port=ports[name], password=PASSWORD)
            # Each Sentinel knows the replica and the two other Sentinels before the drill.
            wait_until(lambda s=sentinel: s.sentinel_master(MASTER)["num-other-sentinels"] == 2
                       and s.sentinel_master(MASTER)["num-slaves"] == 1, seconds=30)
        yield [f"127.0.0.1:{ports[name]}" for name in ("s1", "s2", "s3")], ports["master"], ports["replica"], processes
    finally:
        for process in processes.values():
            process.kill()
            process.wait(timeout=10)


async def receive(layer, channel, seconds=30):
    return await asyncio.wait_for(layer.receive(channel), seconds)


@pytest.mark.parametrize("freeze", [False, True], ids=["killed", "frozen"])
async def test_after_a_failover_the_layer_resubscribes_on_the_new_master(sentinel_site, freeze):
    """The master killed (its connections closed), or frozen with SIGSTOP.

    A frozen master keeps every connection open and answers nothing, as the host of a stopped container
    or a power cut does until TCP gives up (minutes): the layer's reader must notice that its Redis went
    silent, reconnect through Sentinel and resubscribe, well before TCP would.
    """
    sentinels, master_port, replica_port, processes = sentinel_site
    settings = channel_layer_from_env([], "pubsub", sentinel=sentinel_host(sentinels, MASTER, PASSWORD))
    layer = LeanRedisPubSubChannelLayer(**settings["CONFIG"])
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "chat.message", "text": "before"})
        assert (await receive(layer, channel))["text"] == "before"

        if freeze:
            processes["master"].send_signal(signal.SIGSTOP)
        else:
            processes["master"].kill()
        failed = time.monotonic()
        # Once subscribed on the promoted replica, the layer tells the channel to catch up from the database.
        assert await receive(layer, channel) == {"type": "chat.resync"}
        resubscribed = time.monotonic() - failed
        assert redis.Redis(port=replica_port, password=PASSWORD).info("replication")["role"] == "master"
        subscribers = redis.Redis(port=replica_port, password=PASSWORD).pubsub_numsub(
            layer._get_layer()._get_group_channel_name("room")
        )
        assert subscribers[0][1] == 1

        # And live messages flow again, published through the new master.
        while True:
            try:
                await layer.group_send("room", {"type": "chat.message", "text": "after"})
                break
            except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
                assert time.monotonic() - failed < 30
                await asyncio.sleep(0.2)
        assert (await receive(layer, channel))["text"] == "after"
        print(f"resubscribed on the new master {resubscribed:.1f} s after the old one failed")
    finally:
        processes["master"].send_signal(signal.SIGCONT)
        await layer.flush()


async def test_a_sentinel_that_answers_nothing_costs_one_connection(sentinel_site):
    """A Sentinel on a host that is down is tried once per lookup, then the next one is asked.

    redis-py's clients retry a failed connection ten times by default; for a Sentinel that is gone, each
    attempt waits out the connect or read timeout (about fifteen seconds in all, while every publish waits
    behind the lookup), when the next Sentinel in the list would answer at once.
    """
    sentinels, master_port, replica_port, processes = sentinel_site
    accepted = []

    async def mute(reader, writer):  # accepts, reads, never answers: a host that hangs
        accepted.append(writer)
        await reader.read()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    silent = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    settings = channel_layer_from_env([], "pubsub", sentinel=sentinel_host([silent, *sentinels], MASTER, PASSWORD))
    layer = LeanRedisPubSubChannelLayer(**settings["CONFIG"])
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "chat.message", "text": "found"})
        assert (await receive(layer, channel))["text"] == "found"
        assert len(accepted) == 1
    finally:
        await layer.flush()
        for writer in accepted:
            writer.close()
        server.close()
