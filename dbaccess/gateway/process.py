"""One gateway process (``dbaccess-broker gateway``): the broker's configuration and store,
the PostgreSQL protocol server, the statement-record writer and the revocation watcher.

Runs until SIGTERM or SIGINT; then it stops accepting, ends the open connections, and
delivers the statement records it still holds before it exits. Several processes may
listen behind one address: they share nothing but the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from dbaccess.broker.settings import GatewaySection, Settings
from dbaccess.broker.store import Store
from dbaccess.errors import ConfigError, DbaccessError
from dbaccess.gateway.postgres.server import Gateway, GatewayConfig, serve
from dbaccess.gateway.records import BatchingWriter, RecordSink
from dbaccess.gateway.sessions import LiveConnections
from dbaccess.gateway.store_directory import StoreDirectory
from dbaccess.gateway.watcher import RevocationWatcher

log = logging.getLogger("dbaccess.gateway")


def default_name() -> str:
    """How this process signs its statement records: host and pid, unique while it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


def server_tls(section: GatewaySection) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # TLS 1.2 renegotiation: a client could make the gateway redo handshakes at will
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(section.tls_cert_file, section.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"gateway.tls_cert_file/tls_key_file: cannot load them: {exc}",
            hint="both PEM files, the key unencrypted, readable by the gateway",
        ) from None
    return context


# File descriptors a gateway process needs besides two per client connection (the client's
# and its upstream one): the listener, the store's pool, forwarded cancels, logs.
FD_MARGIN = 100


def raise_open_files_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (the default soft 1024 would stop a
    gateway at ~500 connections with EMFILE), and warn when even that is below what
    ``max_connections`` needs. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        # unlimited hard: a large finite soft limit (the kernel caps it at fs.nr_open)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # e.g. above fs.nr_open: keep the soft limit, the warning below says more
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    needed = 2 * max_connections + FD_MARGIN
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "gateway: the open files limit is %d, below the %d that max_connections = %d "
            "needs (2 per connection + %d): raise the hard limit (LimitNOFILE=%d in the "
            "systemd unit, ulimit -Hn, nofile in limits.conf) or lower [gateway] "
            "max_connections to %d",
            soft,
            needed,
            max_connections,
            FD_MARGIN,
            needed,
            max(1, (soft - FD_MARGIN) // 2),
        )
    return soft


@dataclass
class Running:
    """A started gateway process's parts (tests stop it with ``stop``)."""

    gateway: Gateway
    writer: BatchingWriter
    watcher: RevocationWatcher
    store: Store
    directory: StoreDirectory

    @property
    def address(self) -> tuple[str, int]:
        return self.gateway.address

    async def stop(self) -> None:
        self.watcher.stop()
        await self.gateway.close()
        self.writer.close()
        self.store.close()


async def start(
    settings: Settings,
    sink_for: Callable[[Store], RecordSink],
    *,
    listen: tuple[str, int] | None = None,
    store: Store | None = None,
    watch_interval: float = 0.25,
) -> Running:
    section = settings.gateway
    if section is None:
        raise ConfigError(
            "the configuration has no [gateway] section",
            hint="see docs/gateway.md: listen, tls_cert_file, tls_key_file, key_file",
        )
    raise_open_files_limit(section.max_connections)
    key = section.key.ensure()
    store = store or Store(settings.broker.store_url())
    live = LiveConnections()
    directory = StoreDirectory(store, settings, key, live)
    writer = BatchingWriter(sink_for(store))
    host, port = listen or section.listen_address
    config = GatewayConfig(
        host=host,
        port=port,
        tls=server_tls(section),
        require_tls=True,
        params=section.params,
        upstream_source=section.upstream_source_address,
        reuse_port=True,  # more processes may join on the same address
        cancel_peers=True,  # and hand each other the cancels that reach the wrong one
        mock_salt_key=key,  # all of them then show an unknown user the same salt
        max_startups=section.max_startups,
        max_startups_per_source=section.max_startups_per_source,
        max_connections=section.max_connections,
    )
    watcher = RevocationWatcher(live, directory.standing, interval=watch_interval)
    directory.seen = watcher.expect
    gateway = await serve(directory, writer, config, live)
    watcher.start()
    return Running(gateway, writer, watcher, store, directory)


def run(
    settings: Settings,
    sink_for: Callable[[Store], RecordSink],
    name: str,
    reload: Callable[[], Settings] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (uvloop when it is installed). SIGHUP calls ``reload``:
    a valid configuration's targets and guardrails apply to the connections that come
    next (the listener, TLS and key stay as started); an invalid one is logged, and the
    running one stays."""

    async def main() -> None:
        running = await start(settings, sink_for)
        host, port = running.address
        log.info("gateway %s listening on %s:%d", name, host, port, extra={"gateway": name})
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)

        def reread() -> None:
            if reload is None:
                return
            try:
                running.directory.settings = reload()
            except DbaccessError as exc:
                log.error("gateway %s: configuration reload refused: %s", name, exc.message)
            else:
                log.info("gateway %s: configuration reloaded", name)

        loop.add_signal_handler(signal.SIGHUP, reread)
        await stopping.wait()
        log.info("gateway %s stopping", name, extra={"gateway": name})
        await running.stop()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
