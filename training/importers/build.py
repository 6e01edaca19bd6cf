"""An `Imported` model -> our ``Seq2SeqTransformer`` -> a bundle.

`finalize` settles what the readers leave open: the decoder's start row (a CTranslate2 Marian
model starts from a zero embedding: one zero row is appended, as Hugging Face's <pad> is), a
padding id valid on both sides, the tokens never generated (a bias of BANNED_LOGIT), the
position tables cut to max_len. `build_model` makes the PyTorch model and loads every weight
strictly (a missing or extra name fails). `write_bundle` exports it with the model's own codec
(training/export.py), picks the served variant by release.py's rule on a small validation text and
writes the card.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import WEIGHTS_FILE
from training.importers.common import BANNED_LOGIT, Imported, Refused, ct2_default_positions

log = logging.getLogger(__name__)

DEFAULT_MAX_LEN = 512
PAD_PIECES = ("<pad>", "<blank>")


def _grow(embed: np.ndarray, vocab: list[str], rows: int, last: str) -> tuple[np.ndarray, list[str]]:
    """`embed` and `vocab` grown to `rows` with zero rows: fillers, then `last`."""
    extra = rows - embed.shape[0]
    if extra <= 0:
        return embed, vocab
    names = [f"<unused{k}>" for k in range(extra - 1)] + [last]
    taken = set(vocab)
    names = [n if n not in taken else f"{n}#{len(vocab) + k}" for k, n in enumerate(names)]
    return np.concatenate([embed, np.zeros((extra, embed.shape[1]), embed.dtype)]), vocab + names


def finalize(imp: Imported, max_len: int = DEFAULT_MAX_LEN) -> tuple[dict[str, Any], dict[str, np.ndarray], Imported]:
    """Our TransformerConfig fields and state dict for `imp`, and `imp` with the vocabularies
    as the bundle will carry them (rows appended by the start/pad fixes)."""
    src_e, tgt_e = imp.source_embed, imp.target_embed
    src_v, tgt_v = list(imp.source_vocab), list(imp.target_vocab)
    out_w, out_b = imp.output_weight, imp.output_bias
    vt0 = tgt_e.shape[0]
    banned = set(imp.banned)
    bos, pad = imp.bos_id, imp.pad_id
    notes = []
    if imp.zero_start:  # a zero row to start from, never generated
        start_name = "<pad>" if "<pad>" not in tgt_v else "<start>"
        if imp.shared:
            tgt_e, tgt_v = _grow(tgt_e, tgt_v, vt0 + 1, start_name)
            src_e, src_v = tgt_e, list(tgt_v)
        else:
            tgt_e, tgt_v = _grow(tgt_e, tgt_v, vt0 + 1, start_name)
        bos = vt0
        banned.add(vt0)
        notes.append(f"the decoder starts from a zero embedding: row {vt0} ({start_name!r}) appended, never generated")
        if imp.shared or src_e.shape[0] <= vt0:
            pad = vt0 if pad is None else pad
    if pad is None:
        common = [
            i for p in PAD_PIECES for i in [src_v.index(p) if p in src_v else -1] if i >= 0 and tgt_v[i : i + 1] == [p]
        ]
        if common:
            pad = common[0]
    if pad is None:  # a padding row on both sides at the same id, never generated
        before = tgt_e.shape[0]
        rows = max(src_e.shape[0], before) + 1
        if imp.shared:
            tgt_e, tgt_v = _grow(tgt_e, tgt_v, rows, "<pad>")
            src_e, src_v = tgt_e, list(tgt_v)
        else:
            tgt_e, tgt_v = _grow(tgt_e, tgt_v, rows, "<pad>")
            src_e, src_v = _grow(src_e, src_v, rows, "<pad>")
        pad = rows - 1
        banned.update(range(before, rows))
        notes.append(f"no padding token: row {pad} ('<pad>') appended, never generated")
    elif src_e.shape[0] <= pad:
        src_e, src_v = _grow(src_e, src_v, pad + 1, "<pad>")
    vt = tgt_e.shape[0]
    if out_w is not None and out_w.shape[0] < vt:
        out_w = np.concatenate([out_w, np.zeros((vt - out_w.shape[0], out_w.shape[1]), out_w.dtype)])
    if banned or (out_b is not None and out_b.shape[0] < vt):
        bias = np.zeros(vt, np.float32)
        if out_b is not None:
            bias[: out_b.shape[0]] = out_b
        bias[sorted(banned)] = BANNED_LOGIT
        out_b = bias
    if imp.max_positions:  # the positions the model was made for
        max_len = min(max_len, imp.max_positions)
    if imp.positions == "ct2-default":
        enc_pe = dec_pe = ct2_default_positions(max_len, imp.d_model)
        positions = "table"
    else:
        enc_pe, dec_pe, positions = imp.encoder_pe, imp.decoder_pe, imp.positions
    shared = src_e is tgt_e
    fields = {
        "vocab_size": vt,
        "d_model": imp.d_model,
        "n_heads": imp.n_heads,
        "d_ff": imp.d_ff,
        "n_encoder_layers": imp.n_encoder_layers,
        "n_decoder_layers": imp.n_decoder_layers,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "max_len": max_len,
        "pre_norm": imp.pre_norm,
        "pad_id": pad,
        "bos_id": bos,
        "eos_id": imp.eos_id,
        "activation": imp.activation,
        "layer_norm_eps": imp.layer_norm_eps,
        "scale_embeddings": imp.scale_embeddings,
        "embedding_norm": imp.embedding_norm,
        "positions": positions,
        "source_vocab_size": 0 if shared else src_e.shape[0],
        "share_embeddings": shared,
        "tie_output": out_w is None,
        "output_bias": out_b is not None,
    }
    state = dict(imp.weights)
    state["decoder.embed.embedding.weight"] = tgt_e
    if not shared:
        state["encoder.embed.embedding.weight"] = src_e
    if out_w is not None:
        state["output.weight"] = out_w
        if out_b is not None:
            state["output.bias"] = out_b
    elif out_b is not None:
        state["output_bias"] = out_b
    if positions == "table":
        for stack, table in (("encoder", enc_pe), ("decoder", dec_pe)):
            if table is None or table.shape[0] < max_len:
                raise Refused(f"the {stack}'s position table has fewer than max_len={max_len} rows")
            state[f"{stack}.pos.pe"] = np.ascontiguousarray(table[:max_len])
    done = replace(
        imp,
        source_embed=src_e,
        target_embed=tgt_e,
        source_vocab=src_v,
        target_vocab=tgt_v,
        bos_id=bos,
        pad_id=pad,
        banned=sorted(banned),
        info={**imp.info, "vocabulary_fixes": notes},
    )
    return fields, state, done


def build_model(fields: dict[str, Any], state: dict[str, np.ndarray]):
    """Our Seq2SeqTransformer with exactly these weights (every parameter and table assigned)."""
    from training.transformer import Seq2SeqTransformer, TransformerConfig

    try:
        cfg = TransformerConfig.from_dict(fields)
    except ValueError as e:
        raise Refused(str(e)) from None
    model = Seq2SeqTransformer(cfg)
    ours = model.state_dict()
    tensors = {}
    aliases = {"decoder.embed.embedding.weight": ["encoder.embed.embedding.weight", "embed.embedding.weight"]}
    for name, array in state.items():
        tensors[name] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        for other in aliases.get(name, []):
            if other in ours and other not in state:
                tensors[other] = tensors[name]
    missing = sorted(set(ours) - set(tensors))
    extra = sorted(set(tensors) - set(ours))
    if missing or extra:
        raise Refused(f"the weights do not fill our model: missing {missing[:8]}, not ours {extra[:8]}")
    for name, t in tensors.items():
        if tuple(ours[name].shape) != tuple(t.shape):
            raise Refused(f"{name}: shape {tuple(t.shape)} for our {tuple(ours[name].shape)}")
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def import_model(imp: Imported, max_len: int = DEFAULT_MAX_LEN):
    """(model, imported-with-final-vocabularies) for `imp`."""
    fields, state, done = finalize(imp, max_len)
    return build_model(fields, state), done


# ----------------------------------------------------------------------------- bundle

BUILTIN_SENTENCES = {
    "en": [
        "The weather is nice today.",
        "Where is the train station?",
        "I would like a cup of coffee, please.",
        "The children are playing in the park.",
        "We have been living in this city for ten years.",
        "Can you help me find my keys?",
        "The meeting starts at nine o'clock tomorrow morning.",
        "This book was written by a famous author.",
    ],
    "de": [
        "Das Wetter ist heute schön.",
        "Wo ist der Bahnhof?",
        "Ich hätte gerne eine Tasse Kaffee, bitte.",
        "Die Kinder spielen im Park.",
        "Wir wohnen seit zehn Jahren in dieser Stadt.",
        "Kannst du mir helfen, meine Schlüssel zu finden?",
        "Die Besprechung beginnt morgen früh um neun Uhr.",
        "Dieses Buch wurde von einem berühmten Autor geschrieben.",
    ],
    "fr": [
        "Il fait beau aujourd'hui.",
        "Où est la gare ?",
        "Je voudrais une tasse de café, s'il vous plaît.",
        "Les enfants jouent dans le parc.",
        "Nous habitons dans cette ville depuis dix ans.",
        "Peux-tu m'aider à trouver mes clés ?",
        "La réunion commence demain matin à neuf heures.",
        "Ce livre a été écrit par un auteur célèbre.",
    ],
    "es": [
        "Hoy hace buen tiempo.",
        "¿Dónde está la estación de tren?",
        "Quisiera una taza de café, por favor.",
        "Los niños juegan en el parque.",
        "Vivimos en esta ciudad desde hace diez años.",
        "¿Puedes ayudarme a encontrar mis llaves?",
        "La reunión empieza mañana a las nueve.",
        "Este libro fue escrito por un autor famoso.",
    ],
    "it": [
        "Oggi il tempo è bello.",
        "Dov'è la stazione?",
        "Vorrei una tazza di caffè, per favore.",
        "I bambini giocano nel parco.",
        "Viviamo in questa città da dieci anni.",
        "Puoi aiutarmi a trovare le mie chiavi?",
        "La riunione inizia domani mattina alle nove.",
        "Questo libro è stato scritto da un autore famoso.",
    ],
    "pt": [
        "O tempo está bom hoje.",
        "Onde fica a estação de comboios?",
        "Queria uma chávena de café, por favor.",
        "As crianças estão a brincar no parque.",
        "Moramos nesta cidade há dez anos.",
        "Podes ajudar-me a encontrar as minhas chaves?",
        "A reunião começa amanhã às nove horas.",
        "Este livro foi escrito por um autor famoso.",
    ],
    "nl": [
        "Het weer is mooi vandaag.",
        "Waar is het station?",
        "Ik wil graag een kopje koffie.",
        "De kinderen spelen in het park.",
        "We wonen al tien jaar in deze stad.",
        "Kun je me helpen mijn sleutels te vinden?",
        "De vergadering begint morgen om negen uur.",
        "Dit boek is geschreven door een beroemde schrijver.",
    ],
    "ru": [
        "Сегодня хорошая погода.",
        "Где находится вокзал?",
        "Я хотел бы чашку кофе, пожалуйста.",
        "Дети играют в парке.",
        "Мы живём в этом городе уже десять лет.",
        "Ты можешь помочь мне найти ключи?",
        "Встреча начинается завтра в девять утра.",
        "Эту книгу написал известный писатель.",
    ],
    "zh": [
        "今天天气很好。",
        "火车站在哪里？",
        "请给我一杯咖啡。",
        "孩子们在公园里玩。",
        "我们在这个城市住了十年了。",
        "你能帮我找钥匙吗？",
        "会议明天早上九点开始。",
        "这本书是一位著名作家写的。",
    ],
}


def builtin_sentences(lang: str) -> tuple[list[str], str]:
    """A few sentences in `lang` (or English where none are built in) and which language."""
    base = (lang or "en").split("-")[0].split("_")[0].lower()
    if base in BUILTIN_SENTENCES:
        return BUILTIN_SENTENCES[base], base
    return BUILTIN_SENTENCES["en"], "en"


def _vocab_file(folder: Path, name: str, pieces: list[str]) -> Path:
    path = folder / name
    path.write_text(json.dumps(pieces, ensure_ascii=False), encoding="utf-8")
    return path


def run_config(name: str, source_lang: str, target_lang: str, license_text: str, corpus: str, limits: str = ""):
    """The RunConfig an imported model's manifest records: translation, its languages, license."""
    from training.config import DataConfig, RunConfig, TokenizerConfig, TrainConfig

    return RunConfig(
        name=name,
        task="translation",
        data=DataConfig(
            corpus=corpus, license=license_text, source_lang=source_lang, target_lang=target_lang, limits=limits
        ),
        tokenizer=TokenizerConfig(),
        train=TrainConfig(),
        source="import",
    )


def evaluate_variants(
    bundle: Path, sources: Sequence[str], references: Sequence[str] | None, target_lang: str
) -> tuple[dict[str, dict[str, Any]], str]:
    """Each variant's BLEU on `sources` (against `references`, or fp32's own outputs), its speed
    and its batch invariance (every sentence alone = in the batch); and the served variant by
    release.choose_variant (the fastest batch-invariant variant within 0.5 BLEU of fp32)."""
    from service.runtime.bundle import load_manifest
    from service.runtime.sessions import resolve_providers
    from service.runtime.translator import Translator
    from training.evaluate import translation_metrics
    from training.release import choose_variant

    manifest = load_manifest(bundle)
    providers = resolve_providers("cpu")
    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, list[str]] = {}
    for variant in manifest.variants:
        engine = Translator(bundle, manifest, providers, threads=2, variant=variant)
        t0 = time.perf_counter()
        hyps = []
        for start in range(0, len(sources), 32):
            hyps += engine.translate(list(sources[start : start + 32]))
        seconds = time.perf_counter() - t0
        alone = [engine.translate([s])[0] for s in sources]
        outputs[variant] = hyps
        results[variant] = {
            "sentences_per_s": round(len(sources) / max(seconds, 1e-9), 1),
            "batch_invariant": round(sum(a == h for a, h in zip(alone, hyps)) / max(len(sources), 1), 4),
        }
    refs = list(references) if references is not None else outputs["fp32"]
    for variant, hyps in outputs.items():
        scores = translation_metrics(hyps, refs, target_lang)
        results[variant].update({"bleu": scores["bleu"], "chrf": scores["chrf"]})
        results[variant]["same_as_fp32"] = round(
            sum(a == b for a, b in zip(hyps, outputs["fp32"])) / max(len(sources), 1), 4
        )
    served = choose_variant(results, "bleu")
    return results, served


def write_card(
    bundle: Path,
    imp: Imported,
    manifest,
    parity: dict[str, Any],
    results: dict[str, dict[str, Any]],
    served: str,
    valid_note: str,
) -> Path:
    from training.release import VARIANT_TOLERANCE

    info, m = imp.info, manifest.model
    pkg = info.get("package", {})
    lines = [
        f"# {manifest.name} (translation, imported)",
        "",
        f"Translates **{manifest.source_lang} -> {manifest.target_lang}**. Imported, not trained here: "
        f"the weights of `{info.get('source_path', '?')}` ({info.get('format', '?')}), converted by "
        "`python -m training import` into our Transformer and exported to ONNX.",
        "",
        "## Source",
        "",
        f"- Package: {pkg.get('name') or info.get('name') or '?'}"
        + (f", version {pkg['version']}" if pkg.get("version") else ""),
        f"- License: {manifest.data.get('license') or 'not stated in the package'}",
        *([f"- {line}" for line in info.get("provenance", [])]),
        "",
        "## Conversion",
        "",
        f"- Read from: {info.get('format')} {json.dumps(info.get('model_bin', info.get('files', {})))}; weights "
        f"{', '.join(info.get('weight_types', ['float32']))}"
        + (" (dequantized to float32: int8 / scale per row)" if "int8" in info.get("weight_types", []) else ""),
        f"- Transformer d_model {m['d_model']}, {m['n_heads']} heads, FFN {m['d_ff']}, "
        f"{m['n_encoder_layers']}+{m['n_decoder_layers']} layers, {'pre' if m['pre_norm'] else 'post'}-norm, "
        f"activation {m['activation']}, positions {m['positions']}, layer norm eps {m['layer_norm_eps']:g}, "
        f"embeddings {'shared' if m['share_embeddings'] else 'separate'}, output "
        f"{'tied' if m['tie_output'] else 'own matrix'}{' with bias' if m['output_bias'] else ''}, "
        f"vocabulary {manifest.vocab_size}, {m['parameters']:,} parameters.",
        f"- Text: source {'<s> + ' if imp.add_source_bos else ''}pieces{' + </s>' if imp.add_source_eos else ''}; "
        f"the decoder starts from id {imp.bos_id} ({imp.target_vocab[imp.bos_id]!r}).",
        *[f"- {note}" for note in info.get("vocabulary_fixes", [])],
        f"- PyTorch/onnxruntime parity (fp32): {parity}",
        *([f"- Agreement with the original runtime: {info['check']}"] if info.get("check") else []),
        "",
        "## Served variant",
        "",
        f"`{served}`: the fastest batch-invariant variant within {VARIANT_TOLERANCE} BLEU of fp32 on {valid_note}.",
        "",
        "| variant | BLEU | chrF | same text as fp32 | sentences/s | batch invariant |",
        "|---|---|---|---|---|---|",
        *[
            f"| {v} | {r['bleu']} | {r['chrf']} | {r['same_as_fp32']} | {r['sentences_per_s']} "
            f"| {r['batch_invariant']} |"
            for v, r in sorted(results.items(), key=lambda kv: kv[0] != "fp32")
        ],
        "",
    ]
    path = bundle / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_bundle(
    model,
    imp: Imported,
    out: Path,
    name: str,
    source_lang: str,
    target_lang: str,
    license_text: str,
    valid_source: Sequence[str] | None = None,
    valid_target: Sequence[str] | None = None,
    force: bool = False,
    int8: bool = True,
    keep_all_variants: bool = False,
    weights: bool = True,
) -> dict[str, Any]:
    """Export `model` (imported as `imp`, vocabularies final) to the bundle `out`: our ONNX graphs,
    the SentencePiece models and vocabularies under the codec's names, the served variant chosen
    on `valid_source` (or a few built-in sentences, fp32's outputs as their reference), a card;
    with `weights`, the PyTorch weights as weights.pt (`save_weights`)."""
    from service.runtime.bundle import load_manifest, sha256_file, write_manifest
    from service.runtime.codec import CodecSpec
    from training.export import export_bundle
    from training.release import keep_only_variant

    if imp.source_spm is None or not Path(imp.source_spm).is_file():
        raise Refused(f"missing tokenizer: no source SentencePiece model ({imp.source_spm})")
    if imp.target_spm is None or not Path(imp.target_spm).is_file():
        raise Refused(f"missing tokenizer: no target SentencePiece model ({imp.target_spm})")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    if valid_source:
        sources, references = list(valid_source), list(valid_target) if valid_target else None
        valid_note = f"the given validation text ({len(sources)} sentences"
        valid_note += ", its references)" if references else ", fp32's own translations as the reference)"
    else:
        sources, lang = builtin_sentences(source_lang)
        references = None
        valid_note = (
            f"{len(sources)} built-in {lang} sentences (fp32's own translations as the reference: "
            "no --valid-source given)"
        )
    if references is not None and len(references) != len(sources):
        raise Refused(f"--valid-target has {len(references)} lines, --valid-source {len(sources)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Everything is written beside `out` and moved into place at the end: a failure anywhere
    # leaves `out` as it was (absent, or the bundle --force would have replaced).
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.import.", dir=out.parent))
    stage = work / out.name
    try:
        extra = []
        same_spm = Path(imp.source_spm).resolve() == Path(imp.target_spm).resolve()
        target_spm = "spm.model"
        files = work / "files"
        files.mkdir()
        if not same_spm:
            target_spm = "target_spm.model"
            extra.append(files / target_spm)
            shutil.copyfile(imp.target_spm, extra[-1])
        if imp.source_vocab == imp.target_vocab:
            extra.append(_vocab_file(files, "vocab.json", imp.target_vocab))
            src_name = tgt_name = "vocab.json"
        else:
            extra.append(_vocab_file(files, "source_vocab.json", imp.source_vocab))
            extra.append(_vocab_file(files, "target_vocab.json", imp.target_vocab))
            src_name, tgt_name = "source_vocab.json", "target_vocab.json"
        codec = CodecSpec(
            source_spm="spm.model",
            target_spm=target_spm,
            source_vocabulary=src_name,
            target_vocabulary=tgt_name,
            add_source_bos=imp.add_source_bos,
            add_source_eos=imp.add_source_eos,
            unk_piece=imp.unk_piece,
            bos_piece=imp.bos_piece,
            eos_piece=imp.eos_piece,
        )
        cfg = run_config(name, source_lang, target_lang, license_text, corpus=f"imported:{imp.info.get('format', '')}")
        manifest, parity = export_bundle(
            model,
            cfg,
            Path(imp.source_spm),
            stage,
            sources,
            int8=int8,
            extra_files=extra,
            codec=codec,
            training_info={"imported": _jsonable(imp.info)},
            calibration_texts=sources,
        )
        results, served = evaluate_variants(stage, sources, references, target_lang)
        if not keep_all_variants:
            keep_only_variant(stage, served)
        manifest = load_manifest(stage)
        manifest = replace(
            manifest,
            training={
                **manifest.training,
                "parity": parity,
                "variants": results,
                "served_variant_reason": f"fastest batch-invariant variant within 0.5 BLEU of fp32 on {valid_note}",
                # the first stage of its history: a fine-tuned model's card (training.release) starts from it
                "stages": [import_stage(imp)],
            },
        )
        card = write_card(stage, imp, manifest, parity, results, served, valid_note)
        manifest = replace(manifest, files={**manifest.files, card.name: sha256_file(card)})
        write_manifest(stage, manifest)
        if weights:
            save_weights(model, cfg, stage / WEIGHTS_FILE)
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"bundle": str(out), "served_variant": served, "parity": parity, "variants": results}


def import_stage(imp: Imported) -> dict[str, Any]:
    """The imported model as a training stage (training.release.stage_record's fields): trained
    elsewhere, from the package or folder it was read from."""
    info = imp.info
    name = info.get("package", {}).get("name") or info.get("name") or info.get("source_path", "?")
    return {
        "config": f"imported ({info.get('format', '?')})",
        "run": "",
        "init_from": str(info.get("source_path", "")),
        "train_sets": [f"trained elsewhere: {name}"],
        "steps": None,
        "train_seconds": 0.0,
        "hardware": "trained elsewhere",
        "checkpoint": "",
    }


def save_weights(model, cfg, path: Path) -> Path:
    """The model's weights as our releases keep them (training.checkpoint.export_weights): float16,
    tied tensors saved once, with the model and run configs; no optimizer. What `train.init_from`
    fine-tunes: with the codec beside it in the bundle, the training job encodes the user's pairs
    as the service does (training/tasks.py, ImportedTranslationTask). float16 as ours: half the
    size, and its rounding (relative 2**-11) is far below what the served int8 variants change
    and what any fine-tuning step moves."""
    state: dict[str, torch.Tensor] = {}
    shared: dict[tuple[int, tuple], torch.Tensor] = {}
    for name, value in model.state_dict().items():
        key = (value.data_ptr(), tuple(value.shape))
        if key not in shared:
            shared[key] = value.half() if value.is_floating_point() else value
        state[name] = shared[key]
    tmp = path.with_suffix(".tmp")
    torch.save({"model_config": model.cfg.to_dict(), "run_config": cfg.to_dict(), "model": state}, tmp)
    tmp.replace(path)
    return path


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
