"""The training loop end to end on tiny synthetic data: learning, resuming, logging."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.conftest import classification_config, translation_config, write_tiny_toml
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.data import token_batches
from training.evaluate import pad_batch, translate
from training.tasks import MaskedLMTask, prepare_tokenizer, pretrain_config
from training.tokenizer import Tokenizer
from training.train import inverse_sqrt_lr, train


def test_translation_learns_toy_task_and_decodes_it_exactly(parallel_dir, tmp_path):
    cfg = translation_config(parallel_dir, epochs=50, lr=5e-3, warmup_steps=40, checkpoint_every=1000, max_tokens=300)
    summary = train(cfg, tmp_path, device="cpu")
    with (tmp_path / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["train_loss"]) < 0.1, rows[-1]
    assert summary["best_valid_bleu"] > 90
    model = model_from_checkpoint(tmp_path / "best.pt")
    tok = Tokenizer(tmp_path / "spm.model")
    assert translate(model, tok, ["hallo katze spielt", "der hund läuft"]) == ["hello cat plays", "the dog runs"]
    assert (tmp_path / "curves.png").stat().st_size > 1000


@pytest.mark.parametrize("subword_alpha", [0.0, 0.3])
def test_resume_continues_exactly(parallel_dir, tmp_path, subword_alpha):
    # Straight through: 2 epochs. Interrupted: stop at step 15 (mid-epoch), then resume.
    # With subword sampling, the resumed epoch must sample the same segmentations.
    extra = {"subword_alpha": subword_alpha}
    cfg = translation_config(parallel_dir, epochs=2, checkpoint_every=5, max_tokens=256, **extra)
    straight = tmp_path / "straight"
    train(cfg, straight, device="cpu")
    steps = load_checkpoint(straight / "last.pt")["state"]["step"]
    assert steps > 20

    interrupted = tmp_path / "interrupted"
    train(
        translation_config(parallel_dir, epochs=2, checkpoint_every=5, max_tokens=256, max_steps=15, **extra),
        interrupted,
        device="cpu",
    )
    assert load_checkpoint(interrupted / "last.pt")["state"]["step"] == 15
    with pytest.raises(FileExistsError):
        train(cfg, interrupted, device="cpu")  # no silent restart over an existing run
    train(cfg, interrupted, resume=True, device="cpu")

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(interrupted / "last.pt")
    assert a["state"]["step"] == b["state"]["step"] == steps
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=0, atol=0, msg=key)


def test_subword_sampling_varies_pieces_but_not_text(parallel_dir, tmp_path):
    train(translation_config(parallel_dir, max_steps=1), tmp_path, device="cpu")
    tok = Tokenizer(tmp_path / "spm.model")
    text = "der hund läuft und die katze spielt"
    Tokenizer.seed_sampling(7)
    first = [tok.encode(text, sample_alpha=0.1) for _ in range(20)]
    Tokenizer.seed_sampling(7)
    assert [tok.encode(text, sample_alpha=0.1) for _ in range(20)] == first  # reproducible
    assert len({tuple(ids) for ids in first}) > 1  # and varied
    assert all(tok.decode(ids) == text for ids in first)


def test_checkpoint_holds_config_and_rebuilds_model(parallel_dir, tmp_path):
    cfg = translation_config(parallel_dir, max_steps=3)
    train(cfg, tmp_path, device="cpu")
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["model_config"]["d_model"] == 32
    assert ckpt["run_config"]["name"] == "de-en"
    model = model_from_checkpoint(tmp_path / "last.pt")
    assert not model.training


def test_checkpoint_averaging_writes_averaged_model(parallel_dir, tmp_path):
    cfg = translation_config(parallel_dir, epochs=3, average_last=2)
    summary = train(cfg, tmp_path, device="cpu")
    assert (tmp_path / "averaged.pt").exists()
    assert "averaged_valid_bleu" in summary
    assert sorted(p.name for p in tmp_path.glob("epoch*.pt")) == ["epoch2.pt", "epoch3.pt"]
    avg = load_checkpoint(tmp_path / "averaged.pt")["model"]
    e2, e3 = (load_checkpoint(tmp_path / f"epoch{i}.pt")["model"] for i in (2, 3))
    key = "embed.embedding.weight"
    torch.testing.assert_close(avg[key], (e2[key] + e3[key]) / 2)


def test_classifier_learns_separable_task(tsv_dir, tmp_path):
    summary = train(classification_config(tsv_dir, epochs=15), tmp_path, device="cpu")
    assert summary["best_valid_accuracy"] == 100.0


def test_early_stopping_stops_after_patience(parallel_dir, tmp_path):
    # lr 0 never improves after the first epoch: patience 1 stops at epoch 2 of 10.
    cfg = translation_config(parallel_dir, epochs=10, lr=0.0, patience=1)
    summary = train(cfg, tmp_path, device="cpu")
    assert summary["epochs"] == 2


def test_token_batches_bound_padding_and_are_deterministic():
    lengths = [((i * 7919) % 50) + 1 for i in range(1000)]
    a = token_batches(lengths, 400, seed=1, epoch=0)
    assert a == token_batches(lengths, 400, seed=1, epoch=0)
    assert a != token_batches(lengths, 400, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(1000))
    for b in a:
        assert max(lengths[i] for i in b) * len(b) <= 400
    padding = sum(max(lengths[i] for i in b) * len(b) for b in a) - sum(lengths)
    assert padding / sum(lengths) < 0.05


def test_inverse_sqrt_schedule():
    assert inverse_sqrt_lr(50, 1e-3, 100) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(100, 1e-3, 100) == pytest.approx(1e-3)
    assert inverse_sqrt_lr(400, 1e-3, 100) == pytest.approx(5e-4)


def test_tokenizer_has_fixed_special_ids(parallel_dir, tmp_path):
    from training.tasks import prepare_tokenizer

    tok = prepare_tokenizer(translation_config(parallel_dir), tmp_path)
    sp = tok.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert tok.decode(tok.encode("hallo welt")) == "hallo welt"


def test_config_overrides_and_validation(tmp_path: Path):
    from training.config import load_config

    path = tmp_path / "c.toml"
    path.write_text('name = "x"\ntask = "translation"\n[data]\nsource_lang = "de"\ntarget_lang = "en"\n')
    cfg = load_config(path, ["train.epochs=3", "data.test_splits=['a', 'b']", "model.d_model=64"])
    assert cfg.train.epochs == 3 and cfg.data.test_splits == ("a", "b") and cfg.model["d_model"] == 64
    with pytest.raises(ValueError, match=r"unknown keys in \[train\]: \['epoch'\]"):
        load_config(path, ["train.epoch=3"])
    path.write_text('name = "x"\ntask = "summarize"\n[model]\nvocab_size = 5\n')
    with pytest.raises(ValueError) as e:
        load_config(path)
    assert "task='summarize'" in str(e.value) and "model.vocab_size is derived" in str(e.value)


def test_bad_amp_value_is_refused():
    with pytest.raises(ValueError, match=r"train.amp='bf61' must be one of \('auto', 'bf16', 'fp16', 'off'\)"):
        translation_config(Path("."), amp="bf61")


def test_resume_with_a_changed_config_is_refused(parallel_dir, tmp_path):
    train(translation_config(parallel_dir, max_steps=3), tmp_path / "run", device="cpu")
    with pytest.raises(ValueError, match=r"config differs from the run's in \['train.lr'\]"):
        train(translation_config(parallel_dir, max_steps=6, lr=1e-4), tmp_path / "run", resume=True, device="cpu")
    train(translation_config(parallel_dir, max_steps=6), tmp_path / "run", resume=True, device="cpu")  # longer: fine
    assert load_checkpoint(tmp_path / "run" / "last.pt")["state"]["step"] == 6


def test_torchrun_distributed_training_without_code_changes(parallel_dir, tmp_path):
    """Two CPU processes (gloo) under torchrun: each takes half the batches; rank 0 saves."""
    import subprocess
    import sys

    from training.data import token_batches as batches_of
    from training.tasks import TranslationTask, prepare_tokenizer

    config = write_tiny_toml(tmp_path / "c.toml", parallel_dir, "ddp", "max_tokens = 256\nepochs = 2\n")
    run = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "-m",
            "training",
            "train",
            "--config",
            str(config),
            "--run-dir",
            str(run),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    from training.config import load_config

    cfg = load_config(config)
    task = TranslationTask(cfg, prepare_tokenizer(cfg, run))
    lengths = [task.length(e) for e in task.encode(task.raw("train"), filter_long=True)]
    per_rank = [len(batches_of(lengths, 256, cfg.train.seed, e)) // 2 for e in range(2)]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["state"]["step"] == sum(per_rank)
    assert r.stdout.count('"steps"') == 1  # one report, from rank 0


def test_sigterm_saves_a_checkpoint_and_resume_continues(parallel_dir, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    config = write_tiny_toml(
        tmp_path / "c.toml",
        parallel_dir,
        "sig",
        "max_tokens = 64\nepochs = 50\ncheckpoint_every = 100000\naverage_last = 2\n",
    )
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "training", "train", "--config", str(config), "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "epoch2.pt").exists() and time.monotonic() < deadline:  # two epochs done: averaging possible
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "interrupted at step" in err
    assert '"interrupted": true' in out and "average of" not in err  # no averaging on the way out
    step = load_checkpoint(run / "last.pt")["state"]["step"]
    assert step > 0
    r = subprocess.run(
        [*cmd, "--resume", "--set", "train.max_steps=" + str(step + 3)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(run / "last.pt")["state"]["step"] == step + 3


def test_masked_lm_masks_only_real_tokens_in_bert_proportions(tsv_dir, tmp_path):
    cfg = pretrain_config(classification_config(tsv_dir, pretrain_epochs=1, pretrain_mask=0.3))
    tok = prepare_tokenizer(cfg, tmp_path)
    task = MaskedLMTask(cfg, tok)
    examples = task.encode(task.raw("train"), filter_long=True) * 20
    batch = task.collate(examples, torch.device("cpu"), torch.Generator().manual_seed(0))
    original = pad_batch([e[0] for e in examples], tok.sp.pad_id())
    chosen = batch["targets"] != -100
    real = (original != tok.sp.pad_id()) & (original != tok.sp.bos_id())
    assert not (chosen & ~real).any(), "padding or <s> chosen for prediction"
    assert torch.equal(batch["targets"][chosen], original[chosen])
    assert abs(chosen.sum() / real.sum() - 0.3) < 0.02
    masked = batch["ids"][chosen] == tok.sp.eos_id()
    kept = batch["ids"][chosen] == original[chosen]
    assert abs(masked.float().mean() - 0.8) < 0.03
    assert 0.07 < (kept & ~masked).float().mean() < 0.17  # 10% kept, plus random picks of the same id
    assert torch.equal(batch["ids"][~chosen], original[~chosen])


def test_pretraining_phase_learns_and_initialises_the_classifier(tsv_dir, tmp_path):
    # Pretrain 8 epochs, then a classification phase with lr 0: its weights stay exactly the
    # pretrained ones, so any difference would mean the phase did not start from them.
    cfg = classification_config(tsv_dir, epochs=1, lr=0.0, pretrain_epochs=8, pretrain_lr=3e-3)
    summary = train(cfg, tmp_path, device="cpu")
    with (tmp_path / "pretrain" / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    # Random words are hard to guess, but their distribution is learnt: the loss must fall.
    assert float(rows[-1]["valid_loss"]) < float(rows[0]["valid_loss"]) - 0.5, rows
    assert summary["pretrain"]["epochs"] == 8
    pre = load_checkpoint(tmp_path / "pretrain" / "last.pt")["model"]
    fine = load_checkpoint(tmp_path / "last.pt")["model"]
    assert pre.keys() == fine.keys()
    for key in pre:
        torch.testing.assert_close(fine[key], pre[key], rtol=0, atol=0)
    assert load_checkpoint(tmp_path / "pretrain" / "last.pt")["model_config"]["dropout"] == 0.1


def test_init_from_released_weights_continues_with_their_tokenizer(parallel_dir, tmp_path):
    import shutil

    from training.checkpoint import export_weights

    train(translation_config(parallel_dir, max_steps=4), tmp_path / "a", device="cpu")
    released = tmp_path / "bundle"
    released.mkdir()
    export_weights(tmp_path / "a" / "last.pt", released / "weights.pt")
    shutil.copyfile(tmp_path / "a" / "spm.model", released / "spm.model")
    weights = load_checkpoint(released / "weights.pt")
    assert "optimizer" not in weights and weights["model"]["embed.embedding.weight"].dtype == torch.float16
    # lr 0: the weights must come out exactly as they went in (fp16-rounded), tokenizer copied
    cfg = translation_config(parallel_dir, max_steps=2, lr=0.0, init_from=str(released / "weights.pt"))
    train(cfg, tmp_path / "b", device="cpu")
    assert (tmp_path / "b" / "spm.model").read_bytes() == (released / "spm.model").read_bytes()
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    for key, value in weights["model"].items():
        torch.testing.assert_close(b[key], value.to(b[key].dtype), rtol=0, atol=0, msg=key)


def test_casual_text_augmentation_for_language_id(tmp_path):
    from training.tasks import casual, make_task

    assert casual("Hello!") == "hello" and casual("Wie geht es dir?") == "wie geht es dir" and casual("...") == "..."
    data = tmp_path / "lid"
    data.mkdir()
    import gzip

    with gzip.open(data / "train.tsv.gz", "wt") as f:
        f.write("sentence\tlabel\n" + "".join(f"Hallo Welt {i}!\tdeu\n" for i in range(10)))
    from training.config import config_from_dict

    cfg = config_from_dict(
        {
            "name": "lid",
            "task": "classification",
            "data": {"dir": str(data), "labels": ["de", "en"], "label_aliases": ["deu=de"], "casual_fraction": 0.5},
        }
    )
    rows = make_task(cfg, tokenizer=None).raw("train")  # type: ignore[arg-type]
    assert len(rows) == 15 and rows[0] == ("Hallo Welt 0!", 0)
    assert all(t == t.lower() and not t.endswith("!") for t, _ in rows[10:])


def test_extra_train_files_eval_files_and_windows_of_long_texts(tsv_dir, tmp_path):
    import gzip

    from training.tasks import make_task

    long_file = tmp_path / "long.tsv.gz"
    with gzip.open(long_file, "wt") as f:
        f.write("sentence\tlabel\n" + " ".join(["good movie"] * 100) + "\t1\n" + "bad\t0\n")
    cfg = classification_config(tsv_dir, epochs=1)
    from dataclasses import replace

    cfg = replace(
        cfg,
        data=replace(
            cfg.data,
            train_files=(str(long_file),),
            eval_files=(f"long {long_file}",),
            window_long_texts=True,
            max_tokens_per_sentence=32,
        ),
    )
    tok = prepare_tokenizer(cfg, tmp_path / "run")
    task = make_task(cfg, tok)
    rows = task.raw("train")
    assert len(rows) == 300 + 2 and rows[-2][1] == 1
    assert task.raw("long") == [(" ".join(["good movie"] * 100), 1), ("bad", 0)]
    encoded = task.encode(rows[-2:], filter_long=True)
    pieces = tok.encode(rows[-2][0])
    windows = [e for e in encoded if e[1] == 1]
    assert len(windows) == -(-len(pieces) // 31) > 1 and all(len(w[0]) <= 32 for w in windows)
    assert [p for w, _ in windows for p in w[1:]] == pieces  # every piece, once, after <s>
    assert len(task.encode(rows[-2:], filter_long=False)) == 2  # validation: one input per text
