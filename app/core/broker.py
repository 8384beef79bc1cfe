"""kombu transports with two fixes: Redis's channel fails with a connection error (which Celery
tolerates) rather than an AttributeError (which kills the worker) once its connection is closed,
and the embedded SQLite broker deletes each message it delivers rather than keeping it."""

from typing import Any, ClassVar

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from sqlalchemy import text

# The URL prefix that names kombu's SQLAlchemy transport; `celery_config` strips it and names
# `SQLTransport` instead.
SQL_PREFIX = "sqla+"


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


class SQLChannel(kombu_sqlalchemy.Channel):
    """kombu's SQLAlchemy channel, deleting a message as it delivers it.

    kombu marks a delivered message invisible and never reads it again (an unacknowledged one
    goes back to the queue as a new message), but never deletes it either: the embedded
    broker's file grew by every wake-up ever sent, and each delivery's query walked the
    delivered rows of its queue. Those an older version left are deleted at the first delivery.
    """

    _swept: ClassVar[set[str]] = set()

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        found = self._get_or_create(queue)
        session = self.session
        if session.bind.name == "sqlite":
            session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            message_cls = self.message_cls
            if self.connection.client.hostname not in self._swept:
                session.query(message_cls).filter(message_cls.visible.is_(False)).delete(
                    synchronize_session=False
                )
                self._swept.add(self.connection.client.hostname)
            message = (
                session.query(message_cls)
                .with_for_update()
                .filter(message_cls.queue_id == found.id)
                .filter(message_cls.visible.is_not(False))
                .order_by(message_cls.sent_at, message_cls.id)
                .limit(1)
                .first()
            )
            if message is None:
                raise Empty()
            payload = loads(bytes_to_str(message.payload))
            session.delete(message)
            return payload
        finally:
            session.commit()


class SQLTransport(kombu_sqlalchemy.Transport):
    Channel = SQLChannel
