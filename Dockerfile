# weir: multi-stage build; the runtime image holds only the binary and its default config.
# The shipped config listens on 127.0.0.1 (reachable only inside the container): mount your own
# config listening on 0.0.0.0, e.g. docker run -v $PWD/my.toml:/etc/weir/config/weir.toml -p 8080:8080 weir
FROM rust:1-slim-bookworm AS build
# aws-lc-sys (rustls's crypto) builds C with gcc and runs perl scripts.
RUN apt-get update && apt-get install -y --no-install-recommends perl make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin weir

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home weir
WORKDIR /etc/weir
COPY --from=build /src/target/release/weir /usr/local/bin/weir
COPY config/weir.toml /etc/weir/config/weir.toml
# Development certificate only, so the shipped config starts; mount real ones in production.
COPY certs-dev /etc/weir/certs-dev
USER weir
EXPOSE 8080 8443 9901
ENTRYPOINT ["/usr/local/bin/weir"]
CMD ["run", "--config", "/etc/weir/config/weir.toml"]
