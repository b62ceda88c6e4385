# Stand-in for gcr.io/distroless/cc-debian12:nonroot, the runtime image. It keeps
# distroless's promises: glibc, libgcc and the CA certificates of Debian 12, the users
# root, nobody and nonroot (uid 65532) as the default user, and nothing else: no shell,
# no package manager, no coreutils.
FROM cartae-local/debian:bookworm AS files
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The packages' own files only, each copied to its directory's real path: bookworm's
# merged /usr makes /lib and /lib64 symlinks into /usr, recreated below.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata netbase \
    && mkdir -p /out/etc /out/tmp /out/home/nonroot \
    && dpkg -L libc6 libgcc-s1 tzdata netbase \
       | while read -r path; do \
           [ -f "$path" ] || continue; \
           dir="$(readlink -f "$(dirname "$path")")"; \
           mkdir -p "/out$dir" && cp -a "$path" "/out$dir/"; \
         done \
    && cp -a --parents /etc/ssl/certs/ca-certificates.crt /out \
    && ln -s usr/lib /out/lib && ln -s usr/lib64 /out/lib64 \
    && printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
         'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
         'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > /out/etc/passwd \
    && printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' > /out/etc/group \
    && printf 'hosts: files dns\n' > /out/etc/nsswitch.conf \
    && chown 65532:65532 /out/home/nonroot && chmod 1777 /out/tmp \
    && rm -rf /out/usr/bin /out/usr/sbin /out/sbin /out/bin /out/usr/share/doc /out/usr/share/man

FROM scratch
COPY --from=files /out/ /
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /home/nonroot
