#!/usr/bin/env sh
# Serve tfrec exports with the official TensorFlow Serving image.
#
#   EXPORTS=/abs/path/to/exports ./docker-run.sh
#
# EXPORTS holds one directory per model (ranker/1/saved_model.pb, ...) and models.config.
# gRPC on :8500 (serving.Client("localhost:8500")), REST on :8501
# (serving.RestClient("http://localhost:8501")).
set -eu
: "${EXPORTS:?set EXPORTS to the directory holding the model directories and models.config}"
HERE=$(cd "$(dirname "$0")" && pwd)

exec docker run --rm \
  -p 8500:8500 -p 8501:8501 \
  --mount "type=bind,source=${EXPORTS},target=/models,readonly" \
  --mount "type=bind,source=${HERE}/batching_parameters.txt,target=/config/batching_parameters.txt,readonly" \
  --mount "type=bind,source=${HERE}/monitoring.config,target=/config/monitoring.config,readonly" \
  tensorflow/serving:2.20.0 \
  --model_config_file=/models/models.config \
  --model_config_file_poll_wait_seconds=60 \
  --allow_version_labels_for_unavailable_models=true \
  --file_system_poll_wait_seconds=30 \
  --enable_batching \
  --batching_parameters_file=/config/batching_parameters.txt \
  --monitoring_config_file=/config/monitoring.config

# One model without a config file: the image's entrypoint serves /models/${MODEL_NAME}.
#   docker run --rm -p 8500:8500 -p 8501:8501 \
#     --mount type=bind,source=/abs/exports/ranker,target=/models/ranker \
#     -e MODEL_NAME=ranker tensorflow/serving:2.20.0
