# Stand-in for prom/node-exporter (the compose file names v1.8): Debian's
# prometheus-node-exporter, 1.5 on bookworm, which takes the same --path.rootfs and
# --collector.filesystem.mount-points-exclude flags. Runs as nobody like the official image.
FROM cartae-local/debian:bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus-node-exporter \
    && rm -rf /var/lib/apt/lists/*
USER 65534:65534
EXPOSE 9100
ENTRYPOINT ["/usr/bin/prometheus-node-exporter"]
