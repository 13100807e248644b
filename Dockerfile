# One image for every Studio process; compose picks the module with `command`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from the hashed lock alone, so a code change does not reinstall them and every build gets
# the same versions as CI (`make lock` refreshes it).
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY pyproject.toml ./
COPY common ./common
COPY services ./services
COPY devstack ./devstack
COPY studio_cli ./studio_cli
# The project alone: its dependencies are all in place, and `pip check` fails the build if the lock lacks one.
RUN pip install --no-deps --no-build-isolation . \
    && pip check \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin studio

# Nothing in the image needs root at run time.
USER studio

EXPOSE 8080 8081 8082 8090
CMD ["python", "-m", "services.api"]
