# The userpath-worker image: one image for the worker, beat and the one-shot migration
# (docker-compose.yml picks the command). Runtime dependencies only, as a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 userpath \
    && useradd --system --uid 10001 --gid userpath --no-create-home --shell /usr/sbin/nologin userpath

WORKDIR /src

# Dependencies in their own layer: it is rebuilt only when pyproject.toml changes, not on every
# source edit. Only [project].dependencies: no test extra in the image. userpath-client (the
# wire contract) is not on an index: it is installed from this repository below.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        | grep -v '^userpath-client' > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The wire contract's distribution, then the package itself, without touching the dependencies
# installed above.
COPY clients/python ./clients/python
RUN pip install --no-deps ./clients/python && rm -rf /src/clients/python/build
COPY README.md ./
COPY config ./config
COPY tasks ./tasks
COPY userpath_worker ./userpath_worker
RUN pip install --no-deps . && rm -rf /src/build

# A writable working directory: beat keeps celerybeat-schedule here (a volume in compose).
RUN mkdir -p /var/lib/userpath && chown userpath:userpath /var/lib/userpath
WORKDIR /var/lib/userpath
USER userpath

# Healthchecks are in docker-compose.yml (`userpath health` for workers).
CMD ["userpath", "worker"]
