# Stand-in for prom/prometheus (the compose file names v2.55): Debian's prometheus, 2.42
# on bookworm, at the official image's paths (/bin/prometheus, /etc/prometheus,
# /prometheus), running as nobody like it.
FROM cartae-local/debian:bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
# nobody, by number as the official image does.
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
