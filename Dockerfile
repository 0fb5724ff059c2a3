# The worker image (and luigid's): the pipeline, its settings profiles, and luigid's task history.
FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg pyproject.toml README.md luigi.cfg ./
COPY pipeline ./pipeline
COPY config ./config
RUN pip install --no-cache-dir '.[scheduler]'
# luigi.cfg (the embedded default) is read from here; profiles are layered with LUIGI_CONFIG_PATH.
ENTRYPOINT ["luigi", "--module", "pipeline"]
CMD ["--help"]
