# Runnable image of the app and the engine.
#   docker build -t rop-noisy-labels .
#   docker run --rm -p 127.0.0.1:8501:8501 -v "$PWD/data:/app/data" rop-noisy-labels            # CPU
#   docker run --rm -p 127.0.0.1:8501:8501 -v "$PWD/data:/app/data" --gpus all rop-noisy-labels # NVIDIA GPU
# `-p 127.0.0.1:8501:8501` publishes the app on the host's loopback only; a bare `-p 8501:8501` would open it to
# the network (the app has no login).
# Mount /app/data: the workspace database (review decisions) and runs live there and must outlive the container.
# The engine CLI runs in the same image: docker run --rm -v "$PWD/data:/app/data" rop-noisy-labels python -m engine --help
FROM python:3.11-slim

# torch from requirements.txt is a CUDA build: it runs on the CPU and uses the GPU the host passes with --gpus all.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# Code is owned by root and read-only for the app user; only /app/data (the workspace) is writable.
RUN useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin app \
    && mkdir -p /app/data \
    && chown app:app /app/data
COPY engine/ ./engine/
COPY app/ ./app/

# Numeric uid: Kubernetes' runAsNonRoot and hosts without this user can verify it is not root.
USER 1000:1000

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).status != 200)"]

# Inside the container the app must listen on all of the container's interfaces, or `docker run -p` cannot reach
# it; app/.streamlit/config.toml keeps 127.0.0.1 everywhere else. Publish the port on the host's loopback only
# (`-p 127.0.0.1:8501:8501`, above). Every other setting (no tracebacks, no usage statistics) comes from that file.
CMD ["streamlit", "run", "app/Home.py", "--server.address=0.0.0.0", "--server.port=8501"]
