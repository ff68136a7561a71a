"""The ingestion benchmark: ``python -m bench --size full|smoke --broker both|redis|rabbitmq`` (see the
README's Performance section).

It preloads real producer messages into Redis (database 11) and RabbitMQ (virtual host
``userpath_bench``), starts real worker processes against a fresh PostgreSQL database
(``userpath_bench``) and measures how fast they drain from each, next to a naive
one-task-per-event baseline and PostgreSQL's raw COPY rate from the same run.
"""
