# The image the compose file runs the coordinator and the workers from.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY aexec ./aexec
RUN pip install --no-cache-dir ".[ui]"
COPY examples ./examples
ENTRYPOINT ["aexec"]
