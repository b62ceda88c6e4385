# Stand-in for rust:${RUST_VERSION}-slim-bookworm, the Dockerfile's builder: Debian bookworm
# with gcc and libc6-dev, and the machine's own Rust toolchain copied in (no registry here
# to pull the official image from). Same layout as the official image: RUSTUP_HOME and
# CARGO_HOME under /usr/local, cargo on the PATH, so the Dockerfile's cache mounts of
# /usr/local/cargo/registry land where cargo looks.
FROM cartae-local/debian:bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The machine's CA bundle: crates.io is reached through this machine's TLS inspection,
# whose root only this bundle holds.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain /usr/local/rustup/toolchains/rust
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin \
    && for tool in cargo rustc rustdoc; do \
         ln -s /usr/local/rustup/toolchains/rust/bin/$tool /usr/local/cargo/bin/$tool; \
       done \
    && cargo --version && rustc --version
