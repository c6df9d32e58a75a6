# A stand-in for matrixdotorg/synapse, for tests/integration/test_compose.py on machines that
# reach package indexes but no container registry: PyPI's matrix-synapse on the same Debian base
# as the bot's image (the test builds it with `podman build --from localhost/onboarding-base:...`,
# the context being this folder). It has no /start.py and no curl: tests/compose/override.yml
# gives it the commands and the health check it needs instead.
FROM python:3.11-slim-bookworm

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The version the test suite's own Synapse runs (.venv), so both behave alike.
ARG SYNAPSE_VERSION=1.163.2
RUN pip install --no-cache-dir "matrix-synapse==${SYNAPSE_VERSION}"

COPY synapse-generate.sh /usr/local/bin/synapse-generate

WORKDIR /data
VOLUME ["/data"]
EXPOSE 8008
CMD ["python3", "-m", "synapse.app.homeserver", "--config-path", "/data/homeserver.yaml"]
