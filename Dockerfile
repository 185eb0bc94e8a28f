# Static musl build, copied into a minimal non-root base.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools cmake && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p holdfast \
 && cp target/x86_64-unknown-linux-musl/release/holdfast /holdfast

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /holdfast /holdfast
USER 65532:65532
ENTRYPOINT ["/holdfast"]
