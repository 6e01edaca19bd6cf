"""Language codes the models use, with their English names.

Codes are ISO 639-1 where one exists, else ISO 639-3; a script is a BCP 47 subtag (zh-Hans).
"""

NAMES = {
    "af": "Afrikaans",
    "ar": "Arabic",
    "az": "Azerbaijani",
    "be": "Belarusian",
    "bn": "Bengali",
    "ber": "Berber",
    "bg": "Bulgarian",
    "br": "Breton",
    "ca": "Catalan",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "eo": "Esperanto",
    "es": "Spanish",
    "eu": "Basque",
    "fa": "Persian",
    "fi": "Finnish",
    "fr": "French",
    "gl": "Galician",
    "he": "Hebrew",
    "hi": "Hindi",
    "hr": "Croatian",
    "hu": "Hungarian",
    "ia": "Interlingua",
    "id": "Indonesian",
    "ie": "Interlingue",
    "io": "Ido",
    "is": "Icelandic",
    "it": "Italian",
    "ja": "Japanese",
    "ja-Hani": "Japanese (kanji)",
    "ja-Hira": "Japanese (hiragana)",
    "jbo": "Lojban",
    "kab": "Kabyle",
    "ko": "Korean",
    "kw": "Cornish",
    "la": "Latin",
    "lfn": "Lingua Franca Nova",
    "lt": "Lithuanian",
    "mhr": "Eastern Mari",
    "mk": "Macedonian",
    "mr": "Marathi",
    "nb": "Norwegian Bokmål",
    "nds": "Low German",
    "nl": "Dutch",
    "oc": "Occitan",
    "pl": "Polish",
    "pt": "Portuguese",
    "rn": "Kirundi",
    "ro": "Romanian",
    "ru": "Russian",
    "sl": "Slovenian",
    "sr-Cyrl": "Serbian (Cyrillic)",
    "sr-Latn": "Serbian (Latin)",
    "sv": "Swedish",
    "tk": "Turkmen",
    "tl": "Tagalog",
    "tlh": "Klingon",
    "tok": "Toki Pona",
    "tr": "Turkish",
    "tt": "Tatar",
    "ug": "Uyghur",
    "uk": "Ukrainian",
    "vi": "Vietnamese",
    "vo": "Volapük",
    "wuu": "Wu Chinese",
    "yi": "Yiddish",
    "zh": "Chinese",
    "zh-Hans": "Chinese (Simplified)",
    "zh-Hant": "Chinese (Traditional)",
}

# Detection labels that name a script of a language the translators know by its bare code.
_SCRIPT_OF = {"zh-Hans": "zh", "zh-Hant": "zh"}
# Codes clients send for a language the translators know by its bare code (LibreTranslate's
# zh-Hans / zh-Hant, regional tags); compared lowercased.
_ALIASES = {"zh-hans": "zh", "zh-hant": "zh", "zh-cn": "zh", "zh-tw": "zh", "zh-sg": "zh", "zh-hk": "zh"}


def name(code: str) -> str:
    return NAMES.get(code, code)


def normalize(code: str) -> str:
    """A request's language code as the translators name it ("zh-Hans" -> "zh", "DE" -> "de")."""
    low = code.strip().lower()
    return _ALIASES.get(low, low)


def translation_code(label: str) -> str:
    """The translation language of a language-identification label (zh-Hant -> zh)."""
    return _SCRIPT_OF.get(label, label)
