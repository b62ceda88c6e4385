# Stand-in for oliver006/redis_exporter (the compose file names v1.62): Debian's
# prometheus-redis-exporter, 1.45 on bookworm, with the same /scrape multi-target
# endpoint and REDIS_PASSWORD variable. Runs as nobody.
FROM cartae-local/debian:bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus-redis-exporter \
    && rm -rf /var/lib/apt/lists/*
USER 65534:65534
EXPOSE 9121
ENTRYPOINT ["/usr/bin/prometheus-redis-exporter"]
