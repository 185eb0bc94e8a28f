# The operator and mover image: a static musl build copied into distroless/static, non-root.
# (The UBI-based variant for OpenShift certification is Dockerfile.ubi.)
#   docker build -t ghcr.io/holdfast-dev/holdfast:0.1.0 .
# No Docker engine runs on our test machines: `e2e/image-binary` runs this file's cargo
# command (the build stage) and checks that the binary is static and runs.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools cmake && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p holdfast \
 && cp target/x86_64-unknown-linux-musl/release/holdfast /holdfast

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="Holdfast" \
      org.opencontainers.image.description="Kubernetes operator and data mover that protects PersistentVolumes" \
      org.opencontainers.image.source="https://github.com/holdfast-dev/holdfast" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /holdfast /holdfast
COPY LICENSE /licenses/LICENSE
USER 65532:65532
ENTRYPOINT ["/holdfast"]
