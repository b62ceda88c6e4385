# Stand-in for quay.io/prometheuscommunity/postgres-exporter (the compose file names
# v0.15): Debian's prometheus-postgres-exporter, 0.11 on bookworm, which exports the same
# pg_stat_archiver_* series. Runs as nobody like the official image.
FROM cartae-local/debian:bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus-postgres-exporter \
    && rm -rf /var/lib/apt/lists/*
USER 65534:65534
EXPOSE 9187
ENTRYPOINT ["/usr/bin/prometheus-postgres-exporter"]
