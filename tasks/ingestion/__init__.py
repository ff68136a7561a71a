"""Batched ingestion, in Celery's bootstep shape: the boundary decoder (``decoder``), the
transports' batch operations (``redis_transport``, ``amqp_transport``), the pool job (``job``)
and the consumer step that runs them (``step``)."""
