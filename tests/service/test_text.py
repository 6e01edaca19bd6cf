"""Sentence splitting and reassembly of long texts."""

from __future__ import annotations

from service.text import fit, join_segments, split_text


def words(s: str) -> int:
    return len(s.split())


def test_split_keeps_sentences_and_line_breaks():
    segs = split_text("Hallo Welt. Wie geht es?\n\nGut!", 50, words)
    assert [s.text for s in segs] == ["Hallo Welt.", "Wie geht es?", "Gut!"]
    assert join_segments(segs, [s.text for s in segs], "en") == "Hallo Welt. Wie geht es?\n\nGut!"


def test_chinese_sentences_split_and_rejoin_with_spaces_in_english():
    segs = split_text("我爱学习。你好！", 50, len)
    assert [s.text for s in segs] == ["我爱学习。", "你好！"]
    assert join_segments(segs, ["I love learning.", "Hello!"], "en") == "I love learning. Hello!"


def test_long_sentence_is_cut_to_fit():
    text = " ".join(f"w{i}" for i in range(23))
    segs = split_text(text, 5, words)
    assert all(words(s.text) <= 5 for s in segs)
    assert join_segments(segs, [s.text for s in segs], "en") == text


def test_word_without_break_points_is_cut_by_characters():
    pieces = fit("x" * 100, 10, len)
    assert "".join(pieces) == "x" * 100 and all(len(p) <= 10 for p in pieces)


def test_blank_lines_and_indentation_survive():
    text = "  eins.\n\n\nzwei.  "
    segs = split_text(text, 50, words)
    assert join_segments(segs, [s.text.upper() for s in segs], "en") == "  EINS.\n\n\nZWEI.  "
