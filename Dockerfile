# The lingo image: `lingo serve` by default; `lingo fake-model --port 8000` for demos and tests.
#   docker build -t lingo:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lingo ./lingo
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
COPY --from=build /install /usr/local
# A numeric UID, so Kubernetes can check runAsNonRoot; the chart runs with a read-only root
# filesystem and a writable /tmp.
RUN groupadd --system --gid 10001 lingo \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin lingo
USER 10001:10001
WORKDIR /tmp
# proxy, health (/healthz, /readyz), metrics, peer stats
EXPOSE 8080 8081 8082 8083
ENTRYPOINT ["lingo"]
CMD ["serve"]
