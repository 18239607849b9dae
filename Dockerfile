# One image for every Charter service and the CLI; docker-compose.yml builds it once and picks
# each service's command. It installs the built wheel, as `pip install charter` would: the
# schemas, templates, migrations and the demo's files travel inside it.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY charter charter
COPY services services
RUN pip wheel --no-cache-dir --no-deps -w /dist .

FROM python:3.11-slim
COPY constraints.txt /tmp/constraints.txt
COPY --from=wheel /dist /tmp/dist
RUN pip install --no-cache-dir -c /tmp/constraints.txt /tmp/dist/charter-*.whl \
    && rm -r /tmp/dist /tmp/constraints.txt \
    && useradd --uid 10001 --create-home charter \
    && mkdir /keys /config && chown 10001 /keys
# The operator's agents, policies, users file and tool modules are mounted at /config.
ENV CHARTER_AGENTS_DIR=/config/agents \
    CHARTER_POLICIES_DIR=/config/policies \
    CHARTER_USERS_FILE=/config/users.yaml \
    CHARTER_HOME=/home/charter \
    PYTHONPATH=/config/tools \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/charter
ENTRYPOINT []
CMD ["charter", "--help"]
