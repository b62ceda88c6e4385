# Stand-in for gcr.io/etcd-development/etcd (the compose file names v3.5): Debian's
# etcd-server, 3.4 on bookworm, at the official image's paths (/usr/local/bin).
FROM cartae-local/debian:bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends etcd-server etcd-client \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/etcd /usr/local/bin/etcd \
    && ln -s /usr/bin/etcdctl /usr/local/bin/etcdctl
ENV ETCDCTL_API=3
ENTRYPOINT []
CMD ["/usr/local/bin/etcd"]
