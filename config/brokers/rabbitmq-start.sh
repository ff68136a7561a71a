#!/bin/sh
# The rabbitmq service's start (docker-compose.yml, profile rabbitmq): RabbitMQ with two users.
# `userpath`, the worker's, is RABBITMQ_DEFAULT_USER (RabbitMQ makes it at its first start).
# `producer`, for services inside the deployment that publish events, is made here once the node
# runs (its password set again from .env at every start) and may only write to the three ingestion
# queues' exchanges: the permissions of `userpath broker producer-user`. AMQP cannot make users,
# so this runs rabbitmqctl beside the server.
set -eu
docker-entrypoint.sh rabbitmq-server &
server=$!
trap 'kill -TERM "$server"; wait "$server"; exit 0' TERM INT
until rabbitmq-diagnostics -q check_running >/dev/null 2>&1; do
    kill -0 "$server" 2>/dev/null || exit 1 # the server stopped: the container restarts
    sleep 2
done
printf '%s' "$RABBITMQ_PRODUCER_PASSWORD" | rabbitmqctl -q add_user producer 2>/dev/null ||
    printf '%s' "$RABBITMQ_PRODUCER_PASSWORD" | rabbitmqctl -q change_password producer
rabbitmqctl -q set_permissions -p / producer '^$' '^(userpath\.events|userpath\.jobs|userpath\.webhooks)$' '^$'
wait "$server"
