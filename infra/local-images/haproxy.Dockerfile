# Stand-in for haproxy:2.6-bookworm, the Docker socket proxy's image: Debian's haproxy
# 2.6 on bookworm, with the binary on the PATH as in the official image.
FROM cartae-local/debian:bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
