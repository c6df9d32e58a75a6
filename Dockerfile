# The onboarding bot as a container image. How to run it, with or without docker-compose.yml:
# deploy/README.md. Everything the bot keeps (bot.db, crypto/, session.json) lives in the one
# volume /data, next to its config: /data/config.yaml with `storage.data_dir: "."`.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    ONBOARDING_BOT_CONFIG=/data/config.yaml

# A fixed uid/gid, so a host directory mounted at /data can be chowned to it (10001:10001).
RUN groupadd --system --gid 10001 bot \
    && useradd --system --uid 10001 --gid bot --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin bot \
    && mkdir /data \
    && chown bot:bot /data \
    && chmod 0700 /data

# Every dependency comes as a wheel (vodozemac included), so no compiler is needed.
COPY pyproject.toml README.md /src/
COPY bot /src/bot
RUN pip install --no-cache-dir /src \
    && rm -rf /src

# The roadmap shipped with the image; a config may point here or at a file of its own in /data.
COPY roadmap.yaml /app/roadmap.yaml

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# The bot's health endpoint (http.listen in the config).
EXPOSE 9100
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["onboarding-bot", "healthcheck"]
ENTRYPOINT ["onboarding-bot"]
CMD ["run"]
