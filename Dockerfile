FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p subledger-cli

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/subledger --create-home subledger
COPY --from=build /src/target/release/subledger /usr/local/bin/subledger
COPY catalog.example.yaml /etc/subledger/catalog.yaml
USER subledger
WORKDIR /var/lib/subledger
ENV SUBLEDGER_ADDR=0.0.0.0:8080 SUBLEDGER_CATALOG=/etc/subledger/catalog.yaml
EXPOSE 8080
ENTRYPOINT ["subledger"]
CMD ["serve"]
