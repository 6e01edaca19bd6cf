"""Inference engines over onnxruntime: greedy translation and classification."""
