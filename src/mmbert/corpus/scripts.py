"""Writing-system (ISO 15924) detection from Unicode code-point ranges.

Choices:
- A text's script is the majority script of its *letters* (Unicode categories L*); digits, punctuation
  and combining marks are shared across scripts and carry no vote.
- Han mixed with kana is Japanese (``Jpan``); Hangul-majority text is ``Hang`` (FLORES-200 writes
  ``kor_Hang``); Han alone is ``Hani``. Simplified vs traditional Han (``Hans``/``Hant``) cannot be told
  apart by ranges, so that distinction comes from the source's metadata (see ``udhr.py``).
- The range table lists the Unicode blocks the UDHR corpus uses plus the other major scripts; a letter
  outside it counts as ``Zyyy`` (undetermined) so a gap shows up in the build report rather than silently
  voting for a neighbour.
"""

from __future__ import annotations

import bisect
import unicodedata
from collections import Counter

# (first code point, last code point, ISO 15924). Sorted and non-overlapping; checked at import below.
_RANGES: list[tuple[int, int, str]] = [
    (0x0041, 0x024F, "Latn"),  # Basic Latin letters .. Latin Extended-B
    (0x0250, 0x02AF, "Latn"),  # IPA extensions (used in several African orthographies)
    (0x02B0, 0x02FF, "Latn"),  # spacing modifier letters (ʼ, ʻ: glottal stops in Latin orthographies)
    (0x0370, 0x03FF, "Grek"),
    (0x0400, 0x052F, "Cyrl"),
    (0x0531, 0x058F, "Armn"),
    (0x0590, 0x05FF, "Hebr"),
    (0x0600, 0x06FF, "Arab"),
    (0x0700, 0x074F, "Syrc"),
    (0x0750, 0x077F, "Arab"),  # Arabic Supplement
    (0x0780, 0x07BF, "Thaa"),
    (0x07C0, 0x07FF, "Nkoo"),
    (0x0800, 0x083F, "Samr"),
    (0x08A0, 0x08FF, "Arab"),  # Arabic Extended-A
    (0x0900, 0x097F, "Deva"),
    (0x0980, 0x09FF, "Beng"),
    (0x0A00, 0x0A7F, "Guru"),
    (0x0A80, 0x0AFF, "Gujr"),
    (0x0B00, 0x0B7F, "Orya"),
    (0x0B80, 0x0BFF, "Taml"),
    (0x0C00, 0x0C7F, "Telu"),
    (0x0C80, 0x0CFF, "Knda"),
    (0x0D00, 0x0D7F, "Mlym"),
    (0x0D80, 0x0DFF, "Sinh"),
    (0x0E00, 0x0E7F, "Thai"),
    (0x0E80, 0x0EFF, "Laoo"),
    (0x0F00, 0x0FFF, "Tibt"),
    (0x1000, 0x109F, "Mymr"),
    (0x10A0, 0x10FF, "Geor"),
    (0x1100, 0x11FF, "Hang"),  # Hangul Jamo
    (0x1200, 0x139F, "Ethi"),  # Ethiopic + Ethiopic Supplement
    (0x13A0, 0x13FF, "Cher"),
    (0x1400, 0x167F, "Cans"),
    (0x1680, 0x169F, "Ogam"),
    (0x16A0, 0x16FF, "Runr"),
    (0x1700, 0x171F, "Tglg"),
    (0x1780, 0x17FF, "Khmr"),
    (0x1800, 0x18AF, "Mong"),
    (0x18B0, 0x18FF, "Cans"),  # Unified Canadian Aboriginal Syllabics Extended
    (0x1900, 0x194F, "Limb"),
    (0x1950, 0x197F, "Tale"),
    (0x1980, 0x19DF, "Talu"),
    (0x1A20, 0x1AAF, "Lana"),
    (0x1B00, 0x1B7F, "Bali"),
    (0x1B80, 0x1BBF, "Sund"),
    (0x1BC0, 0x1BFF, "Batk"),
    (0x1C50, 0x1C7F, "Olck"),
    (0x1C80, 0x1C8F, "Cyrl"),  # Cyrillic Extended-C
    (0x1C90, 0x1CBF, "Geor"),  # Georgian Extended (Mtavruli)
    (0x1D00, 0x1DBF, "Latn"),  # phonetic extensions
    (0x1E00, 0x1EFF, "Latn"),  # Latin Extended Additional (Vietnamese, Yoruba...)
    (0x1F00, 0x1FFF, "Grek"),  # Greek Extended (polytonic)
    (0x2C00, 0x2C5F, "Glag"),
    (0x2C60, 0x2C7F, "Latn"),  # Latin Extended-C
    (0x2C80, 0x2CFF, "Copt"),
    (0x2D00, 0x2D2F, "Geor"),
    (0x2D30, 0x2D7F, "Tfng"),
    (0x2D80, 0x2DDF, "Ethi"),  # Ethiopic Extended
    (0x2DE0, 0x2DFF, "Cyrl"),
    (0x2E80, 0x2FDF, "Hani"),  # CJK radicals
    (0x3005, 0x3007, "Hani"),  # 々 〆 〇
    (0x3021, 0x3029, "Hani"),  # Hangzhou numerals
    (0x3031, 0x3035, "Kana"),  # kana repeat marks
    (0x3041, 0x309F, "Hira"),
    (0x30A0, 0x30FF, "Kana"),
    (0x3100, 0x312F, "Bopo"),
    (0x3130, 0x318F, "Hang"),  # Hangul compatibility jamo
    (0x31A0, 0x31BF, "Bopo"),
    (0x31F0, 0x31FF, "Kana"),
    (0x3400, 0x4DBF, "Hani"),  # CJK Extension A
    (0x4E00, 0x9FFF, "Hani"),
    (0xA000, 0xA4CF, "Yiii"),
    (0xA4D0, 0xA4FF, "Lisu"),
    (0xA500, 0xA63F, "Vaii"),
    (0xA640, 0xA69F, "Cyrl"),  # Cyrillic Extended-B
    (0xA6A0, 0xA6FF, "Bamu"),
    (0xA700, 0xA7FF, "Latn"),  # Latin Extended-D (saltillo ꞌ ...)
    (0xA980, 0xA9DF, "Java"),
    (0xAA00, 0xAA5F, "Cham"),
    (0xAA80, 0xAADF, "Tavt"),
    (0xAB00, 0xAB2F, "Ethi"),  # Ethiopic Extended-A
    (0xAB30, 0xAB6F, "Latn"),  # Latin Extended-E
    (0xAB70, 0xABBF, "Cher"),  # Cherokee Supplement (lowercase)
    (0xAC00, 0xD7AF, "Hang"),
    (0xF900, 0xFAFF, "Hani"),  # CJK compatibility ideographs
    (0xFB1D, 0xFB4F, "Hebr"),
    (0xFB50, 0xFDFF, "Arab"),  # presentation forms A
    (0xFE70, 0xFEFF, "Arab"),  # presentation forms B
    (0xFF21, 0xFF5A, "Latn"),  # fullwidth Latin
    (0xFF66, 0xFF9F, "Kana"),  # halfwidth katakana
    (0xFFA0, 0xFFDC, "Hang"),  # halfwidth Hangul
    (0x11100, 0x1114F, "Cakm"),
    (0x11300, 0x1137F, "Gran"),
    (0x1E900, 0x1E95F, "Adlm"),
    (0x20000, 0x3134F, "Hani"),  # CJK Extensions B..G
]
_STARTS = [r[0] for r in _RANGES]
assert all(a[1] < b[0] for a, b in zip(_RANGES, _RANGES[1:])), "script ranges must be sorted and disjoint"

UNKNOWN = "Zyyy"


def char_script(ch: str) -> str:
    """ISO 15924 code of one character's block, or ``Zyyy`` when it is outside the table."""
    cp = ord(ch)
    i = bisect.bisect_right(_STARTS, cp) - 1
    if i >= 0 and _RANGES[i][0] <= cp <= _RANGES[i][1]:
        return _RANGES[i][2]
    return UNKNOWN


def letter_scripts(text: str) -> Counter[str]:
    """How many letters (Unicode category L*) of ``text`` fall in each script."""
    counts: Counter[str] = Counter()
    for ch in text:
        if unicodedata.category(ch)[0] == "L":
            counts[char_script(ch)] += 1
    return counts


def detect_script(text: str) -> str:
    """The dominant ISO 15924 script of ``text`` (``Zyyy`` for text without letters)."""
    counts = letter_scripts(text)
    if not counts:
        return UNKNOWN
    kana = counts["Hira"] + counts["Kana"]
    han = counts["Hani"]
    # Japanese prose is mostly kana and kanji together; 5% kana rules out a stray katakana loanword in Chinese.
    if kana and (kana + han) >= 0.5 * sum(counts.values()) and kana >= 0.05 * (kana + han):
        return "Jpan"
    script, _ = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    return script


def same_family(a: str, b: str) -> bool:
    """Whether two script codes name the same letters as far as range detection can tell
    (``Hans``/``Hant`` are both ``Hani``; ``Jpan`` and ``Kore`` include ``Hani``)."""
    han = {"Hani", "Hans", "Hant"}
    if a in han and b in han:
        return True
    return a == b or {a, b} in ({"Jpan", "Hani"}, {"Kore", "Hang"}, {"Kore", "Hani"})
