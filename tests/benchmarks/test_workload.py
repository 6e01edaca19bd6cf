"""The shapes engines.py records for the limit in roofline.py (pure bookkeeping, no timing)."""

from __future__ import annotations

from benchmarks.engines import workload


def test_workload_counts_rows_per_decoder_step_and_encoder_shapes():
    # Two batches: sentences 0 and 1 (sources of 4 and 6 pieces, 2 and 0 output tokens),
    # and sentence 2 alone (source 3, output 1 token). A row runs len(output) + 1 steps.
    batches = [[0, 1], [2]]
    src_lengths = [4, 6, 3]
    outputs = [[7, 8], [], [9]]
    w = workload(batches, src_lengths, outputs)
    assert w["encoder_calls"] == {"2,6": 1, "1,3": 1}
    # batch 1: steps 0 (2 rows), 1 (1 row: sentence 1 ended at step 0), 2 (1 row); batch 2: 2 steps of 1 row
    assert w["decoder_steps"] == {"2": 1, "1": 4}
    assert sum(int(m) * n for m, n in w["decoder_steps"].items()) == sum(len(o) + 1 for o in outputs)


def test_tag_placement_scores_both_ways_on_a_bundle(model_dir):
    from benchmarks.tag_placement import placed, run

    case = {"html": "der <b>hund</b>", "source": "de", "target": "en", "expect": ["<b>dog</b>"]}
    result = run(model_dir, [case], threads=1)  # a server process each way
    assert result["cases"] == 1 and set(result["placed"]) == {"aligned", "search"}
    assert "<b>" in result["rows"][0]["aligned"] and "<b>" in result["rows"][0]["search"]
    assert placed("The <b>dog</b>.", case) and not placed("The <b>the dog</b>.", case)
    assert placed("<b>a</b> <i>b</i>", {"need": ["<b>a</b>", "<i>b</i>"]})
    assert not placed("<b>a</b> b", {"need": ["<b>a</b>", "<i>b</i>"]})


def test_our_graphs_run_inside_onnxruntimes_beam_search_op(model_dir):
    # The T5-layout wrapping of benchmarks/ort_beamsearch is accepted by the op and decodes.
    import numpy as np
    import onnx
    import onnxruntime as ort

    from benchmarks.ort_beamsearch import wrap
    from service.runtime.bundle import load_manifest

    bundle = model_dir / "de-en"
    manifest = load_manifest(bundle)
    files = manifest.variants["int8-static"]
    model = wrap(
        onnx.load(str(bundle / files["encoder"].file)),
        onnx.load(str(bundle / files["decoder"].file)),
        manifest.model,
        2,
        3,
        0,
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": np.array([[5, 6, 7, 3], [8, 9, 3, 0]], np.int32),
        "max_length": np.array([6], np.int32),
        "min_length": np.array([1], np.int32),
        "num_beams": np.array([3], np.int32),
        "num_return_sequences": np.array([2], np.int32),
        "length_penalty": np.array([1.0], np.float32),
        "repetition_penalty": np.array([1.0], np.float32),
    }
    sequences, scores = session.run(None, feeds)
    assert sequences.shape[:2] == (2, 2) and sequences.shape[2] <= 6 and (sequences[:, :, 0] == 2).all()
    assert scores.shape == (2, 2) and (scores[:, 0] >= scores[:, 1]).all()


def test_in_parallel_cuts_a_batch_into_neighbouring_parts_and_keeps_the_order():
    import threading

    from benchmarks.engines import in_parallel

    seen: list[tuple[list[int], str]] = []

    def run(batch: list[int]) -> list[int]:
        seen.append((batch, threading.current_thread().name))
        return [10 * i for i in batch]

    assert in_parallel(run, 2)([5, 6, 7, 8, 9]) == [50, 60, 70, 80, 90]
    assert sorted(b for b, _ in seen) == [[5, 6, 7], [8, 9]]  # neighbouring lengths together


def test_load_scheduler_names_carry_settings():
    from benchmarks.load import scheduler_settings

    assert scheduler_settings("batch") == {"scheduler": "batch"}
    assert scheduler_settings("continuous:decode_workers=1:decode_lanes=24") == {
        "scheduler": "continuous",
        "decode_workers": "1",
        "decode_lanes": "24",
    }


def test_matmul_macs_counts_encoder_positions_and_decoder_row_steps():
    from benchmarks.engines import matmul_macs

    work = {"encoder_calls": {"2,6": 1, "1,3": 1}, "decoder_steps": {"2": 1, "1": 4}}  # 15 positions, 6 row-steps
    d, f, vocab = 4, 8, 10
    macs = matmul_macs(work, d, f, enc_layers=2, dec_layers=3, logits=vocab)
    # per position: 2 encoder layers x (QKV + output: 4 d^2, feed-forward: 2 d f) + 3 decoder layers' cross K, V (2 d^2)
    assert macs["encoder"] == 15 * (2 * (4 * d * d + 2 * d * f) + 3 * 2 * d * d)
    # per row-step: 3 layers x (self QKV + output, cross Q + output: 6 d^2, feed-forward) + the projection
    assert macs["decoder"] == 6 * (3 * (6 * d * d + 2 * d * f) + d * vocab)
    # a target vocabulary cuts only the projection's share
    cut = matmul_macs(work, d, f, enc_layers=2, dec_layers=3, logits=5)
    assert macs["decoder"] - cut["decoder"] == 6 * d * 5 and cut["encoder"] == macs["encoder"]
