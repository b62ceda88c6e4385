# Stand-in for redis:7 (the compose file names 7-alpine): Debian's redis-server, 7.0 on
# bookworm, with what the official image gives the compose file: `sh`, redis-cli, the
# user redis and a /data owned by it (a new named volume takes that ownership).
FROM cartae-local/debian:bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data /usr/local/etc/redis \
    && chown redis:redis /data
WORKDIR /data
CMD ["redis-server"]
