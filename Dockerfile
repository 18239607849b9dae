# One image for every Charter service and the CLI; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY schemas schemas
COPY charter charter
COPY services services
# Editable, so the schemas/ folder beside the packages is where serde expects it.
RUN pip install --no-cache-dir -c constraints.txt -e . && useradd --uid 10001 --create-home charter \
    && mkdir /keys && chown 10001 /keys
COPY agents agents
COPY policies policies
COPY users.yaml users.yaml
ENV CHARTER_AGENTS_DIR=/app/agents \
    CHARTER_POLICIES_DIR=/app/policies \
    CHARTER_USERS_FILE=/app/users.yaml \
    CHARTER_HOME=/home/charter \
    PYTHONUNBUFFERED=1
USER 10001
ENTRYPOINT []
CMD ["charter", "--help"]
