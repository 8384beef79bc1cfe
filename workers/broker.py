"""kombu's Redis transport with one fix: a channel whose connection is closed fails with a
connection error, which Celery tolerates, rather than an AttributeError, which kills the worker."""

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            # When Redis goes away while the consumer waits in BRPOP, Celery closes the broken
            # connection twice: collect() stops at the pending BRPOP (a connection error) but
            # still detaches the transport from its connection; close() then closes the channel
            # again, and requeueing its unacknowledged messages needed a new client, whose
            # address kombu read from the detached (None) connection: AttributeError, which
            # Celery reports as "Unrecoverable error" and the worker exits. As a connection
            # error it is ignored like the first one, and the consumer reconnects.
            raise redis.exceptions.ConnectionError("this channel's broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
