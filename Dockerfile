# transerve: the HTTP service with the shipped model bundles. No torch, no compilers at runtime.
#   docker build -t transerve .                      (CPU, onnxruntime)
#   docker build -t transerve:gpu --build-arg ORT=onnxruntime-gpu .   (CUDA provider; run with --gpus all)
# Settings come from the environment: TRANSERVE_THREADS, TRANSERVE_API_KEYS, ... (see README).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG ORT=onnxruntime
WORKDIR /src
COPY pyproject.toml ./
# Only the service's runtime dependencies, read from pyproject.toml; onnxruntime may be swapped
# for onnxruntime-gpu (same Python module, with the CUDA execution provider).
RUN python -m venv /opt/venv \
 && python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d if not d.startswith('onnxruntime') else '${ORT}' for d in deps))" > requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir -q -r requirements.txt \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && rm -rf /opt/venv/lib/python3*/site-packages/pip /opt/venv/lib/python3*/site-packages/setuptools

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRANSERVE_MODEL_DIR=/app/model \
    TRANSERVE_HOST=0.0.0.0 \
    TRANSERVE_PORT=8000
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin transerve
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY service/ /app/service/
COPY model/ /app/model/
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2).status != 200)"]
# Exec form: uvicorn is PID 1's child-free process and receives SIGTERM itself (graceful drain).
CMD ["python", "-m", "service"]
