# Stand-in for prom/alertmanager (the compose file names v0.27): Debian's
# prometheus-alertmanager, 0.25 on bookworm, at the official image's paths
# (/etc/alertmanager, /alertmanager), running as nobody like it.
FROM cartae-local/debian:bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus-alertmanager \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/prometheus-alertmanager /bin/alertmanager \
    && mkdir -p /alertmanager && chown nobody:nogroup /alertmanager
USER 65534:65534
WORKDIR /alertmanager
EXPOSE 9093
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
