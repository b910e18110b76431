# weir: multi-stage build; the runtime image holds only the binary and its default config.
FROM rust:1-slim-bookworm AS build
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
