# The worker image (and luigid's): the pipeline, its settings profiles, and luigid's task history.
# Built for a registry as it stands (python:3.11-slim, packages from PyPI). Offline, both come in as
# build arguments (.ci/compose: a local Python image and a wheelhouse made with `pip wheel`).
ARG BASE_IMAGE=python:3.11-slim

# The packages are installed in a stage of their own, so neither pip's sources nor a wheelhouse
# stay in the image: only the virtualenv is copied out.
FROM ${BASE_IMAGE} AS build
ARG PIP_SOURCE="--index-url https://pypi.org/simple"
WORKDIR /src
COPY docker/wheelhouse ./docker/wheelhouse
# The dependencies first, from setup.cfg alone (an empty package stands in for the code), so that a
# change to the code rebuilds the layers below only, in seconds. (The stand-in's build files go:
# setuptools would keep its empty __init__.py, newer than the real one.)
COPY setup.cfg pyproject.toml ./
RUN mkdir pipeline && touch README.md pipeline/__init__.py \
    && python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir $PIP_SOURCE '.[scheduler]' \
    && rm -rf pipeline build *.egg-info
COPY README.md ./
COPY pipeline ./pipeline
# The project as a wheel of its own (-B: nothing written into the virtualenv, so copying it below
# stays cached while the dependencies stay the same).
RUN /opt/venv/bin/python -B -m pip wheel --no-cache-dir --no-deps $PIP_SOURCE --wheel-dir /project .

FROM ${BASE_IMAGE}
COPY --from=build /opt/venv /opt/venv
COPY --from=build /project /project
RUN /opt/venv/bin/python -B -m pip install --no-cache-dir --no-deps --force-reinstall /project/*.whl
# The project folder (luigi.cfg, config/, data/) is /app whatever the current directory.
ENV PATH=/opt/venv/bin:$PATH NYC_TLC_HOME=/app
WORKDIR /app
COPY luigi.cfg ./
COPY config ./config
# A user of its own, owning the folders the compose volumes mount (a new volume takes them over).
RUN useradd --uid 10001 --no-create-home --home-dir /app app \
    && mkdir -p data/luigid data/staging && chown -R app data
USER app
# luigi.cfg (the embedded default) is read from here; profiles are layered with LUIGI_CONFIG_PATH.
ENTRYPOINT ["luigi", "--module", "pipeline"]
CMD ["--help"]
