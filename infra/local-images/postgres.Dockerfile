# Stand-in for postgres:${PG_MAJOR}-bookworm, the base of infra/patroni/Dockerfile:
# Debian's own PostgreSQL (bookworm has 15; the official image's repository also has 16),
# the postgres user as uid and gid 999 as in the official image, its binaries on the PATH.
FROM cartae-local/debian:bookworm
ARG PG_MAJOR=15
RUN groupadd -r -g 999 postgres \
    && useradd -r -g postgres -u 999 -d /var/lib/postgresql -s /bin/bash postgres
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}" \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 2777 /var/run/postgresql
ENV PG_MAJOR=${PG_MAJOR} \
    PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
