# syntax=docker/dockerfile:1.7
FROM rust:1.80-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/app/target,id=target-cache \
    cargo chef cook --release --recipe-path recipe.json
COPY --exclude=target --exclude=*.md . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/app/target,id=target-cache \
    cargo build --release --bin app && cp target/release/app /usr/local/bin/app

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=builder --chmod=0755 /usr/local/bin/app /usr/local/bin/app
ONBUILD COPY config.toml /etc/app/config.toml
ENTRYPOINT ["/usr/local/bin/app"]
