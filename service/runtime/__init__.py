"""The torch-free, FastAPI-free runtime: bundles, graph contracts, preprocessing, onnxruntime
sessions and the engines. The only part of service/ that the training job and the benchmarks
import."""
