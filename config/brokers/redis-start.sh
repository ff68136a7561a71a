#!/bin/sh
# The redis service's start (docker-compose.yml): Redis with an ACL file. At the first start it is
# written from .env with two users and the default user off: `userpath`, the worker's (every key,
# channel and command), and `producer`, for services inside the deployment that publish events
# (LPUSH onto the three ingestion queues and their lanes, write-only, and nothing else: the rules
# of `userpath broker producer-user`). After that the file on the redis-data volume is the truth:
# `userpath broker producer-user NAME --apply` adds a user to it (ACL SAVE), and a password is
# changed with ACL SETUSER and ACL SAVE, not in .env (docs/operations.md).
set -eu
acl_file="${REDIS_ACL_FILE:-/data/users.acl}"
if [ ! -s "$acl_file" ]; then
    umask 077
    sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
    {
        echo "user default off"
        echo "user userpath on #$(sha256 "$REDIS_WORKER_PASSWORD") ~* &* +@all"
        echo "user producer on #$(sha256 "$REDIS_PRODUCER_PASSWORD") resetkeys resetchannels -@all +lpush +llen +zadd +eval +evalsha +multi +exec +ping +select %W~userpath.events %RW~userpath.events.lane.* %RW~userpath.events.lanes %W~userpath.jobs %RW~userpath.jobs.lane.* %RW~userpath.jobs.lanes %W~userpath.webhooks %RW~userpath.webhooks.lane.* %RW~userpath.webhooks.lanes"
    } >"$acl_file.new"
    mv "$acl_file.new" "$acl_file"
fi
exec redis-server "$@" --aclfile "$acl_file"
