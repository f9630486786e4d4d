FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY automations ./automations
COPY workers ./workers
RUN pip install --no-cache-dir '.[postgres]'
COPY examples ./examples
CMD ["flowrelay", "server"]
