"""LlamaGen's t2i caption preprocessing, reimplemented without ftfy and BeautifulSoup.

LlamaGen's ``T5Embedder`` (``language/t5.py``, default ``use_text_preprocessing=True``) runs
every prompt through its ``clean_caption`` twice before T5 tokenisation; with
``use_text_preprocessing=False`` it only lowercases and strips. This module reproduces both
from a description of what they do (no code is shared with LlamaGen, PixArt, ftfy or bs4):

- :func:`llamagen_preprocess` (``str -> str``): the default, two passes of :func:`clean_caption`.
- :func:`lowercase` (``str -> str``): ``text.lower().strip()``.

One :func:`clean_caption` pass: percent-decoding (``urllib.parse.unquote_plus``), lowercase,
removal of URLs, the text content of HTML (what ``BeautifulSoup(text, "html.parser").text``
returns: tags, comments, declarations and the contents of ``script``/``style``/``template``/
``rt``/``rp`` dropped, entities decoded), ``@nicknames``, CJK ideographs and strokes, dash and
quote normalisation, ``&quot``/``&amp`` leftovers, IP addresses, hashtag numbers, long digit
runs, file names, punctuation runs, then the ftfy clean-up (:func:`fix_text`) plus two rounds of
``html.unescape``, then product-code / shipping / download / page-number removal and spacing
of punctuation.

Where this differs from LlamaGen's (ftfy 6.3, bs4 4.x, same Python ``html.parser``):

- ftfy's mojibake repair (``fix_encoding``: text that was UTF-8 decoded as Latin-1 /
  Windows-1252, e.g. ``"cafÃ©"``) is not reproduced: such text is left as it is. Clean
  Unicode (every GenEval prompt, every caption typed by a person) is unaffected; ftfy leaves it
  alone too. Everything else ftfy's default ``fix_text`` does is reproduced (HTML entities when
  a line has no ``<``, C1 controls as Windows-1252, Latin ligatures, full/half-width forms,
  curly quotes, line breaks, surrogates, ANSI escapes, control characters, NFC).
- BeautifulSoup's tree builder is modelled for the text it yields (open-tag stack, void
  elements, whitespace-only strings collapsed to one space or newline outside ``pre`` /
  ``textarea``); markup that makes ``html.parser`` raise is returned unparsed instead of
  raising (bs4 raises ``ParserRejectedMarkup``).

``tests/fixtures/caption/llamagen_captions.json`` holds LlamaGen's own outputs (GenEval's 553
prompts and hard cases), generated with ``conversion/make_caption_table.py``; the tests check
every entry. ``conversion/make_caption_table.py --llamagen-src SRC --fuzz 20000`` compares on
random markup-heavy strings (mojibake fragments included): 0 of 20000 differ once ftfy's
``fix_encoding`` is switched off in LlamaGen's copy, 1376 of 20000 with it on (ftfy 6.3.1,
bs4 4.15.0, Python 3.11.7).
"""
from __future__ import annotations

import html
import html.entities
import re
import unicodedata
import urllib.parse
from html.parser import HTMLParser

__all__ = ["llamagen_preprocess", "lowercase", "clean_caption", "html_text", "fix_text"]


def lowercase(text: str) -> str:
    """LlamaGen's preprocessing with ``use_text_preprocessing=False``: str -> str,
    ``text.lower().strip()``."""
    return text.lower().strip()


def llamagen_preprocess(text: str) -> str:
    """LlamaGen's default t2i prompt preprocessing: str -> str, :func:`clean_caption` applied
    twice (as ``T5Embedder.text_preprocessing`` does)."""
    return clean_caption(clean_caption(text))


# ------------------------------------------------------------------ HTML text (bs4 .text)

_VOID = frozenset("area base br col embed hr img input keygen link menuitem meta param source "
                  "track wbr basefont bgsound command frame image isindex nextid spacer".split())
_HIDDEN = frozenset({"script", "style", "template", "rt", "rp"})   # their strings are not text
_KEEP_SPACE = frozenset({"pre", "textarea"})
_HTML_SPACE = frozenset(" \n\t\f\r")
_NAMED = {name.rstrip(";"): char for name, char in sorted(html.entities.html5.items(), reverse=True)}


def _numeric_reference(body: str) -> str:
    """The character of ``&#body;`` (body ``"65"`` or ``"x41"``) as an HTML5 parser reads it."""
    hexa = body[:1] in ("x", "X")
    digits = re.match(r"[0-9a-fA-F]*" if hexa else r"[0-9]*", body[1:] if hexa else body).group()
    rest = (body[1:] if hexa else body)[len(digits):]
    if not digits:
        return body
    n = int(digits, 16 if hexa else 10)
    if n == 0 or n > 0x10FFFF or 0xD800 <= n <= 0xDFFF:
        char = "\ufffd"
    elif 0x80 <= n <= 0x9F:
        try:  # references written in Windows-1252 (five bytes are undefined there: kept)
            char = bytes([n]).decode("cp1252")
        except UnicodeDecodeError:
            char = chr(n)
    else:
        char = chr(n)
    return char + rest


class _TextOfHTML(HTMLParser):
    """Collects the strings BeautifulSoup's ``.text`` would join (see :func:`html_text`)."""

    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.open: list[str] = []          # open tags, innermost last
        self.closed_voids: list[str] = []  # void tags already closed (their </x> is ignored)
        self.pending: list[str] = []       # data since the last tag event
        self.out: list[str] = []

    def flush(self, kind: str = "text") -> None:
        """Ends the current string; kind "text" (visible unless inside a hidden tag), "cdata"
        (always visible) or "hidden" (comments, declarations)."""
        if not self.pending:
            return
        text = "".join(self.pending)
        self.pending = []
        if not _KEEP_SPACE.intersection(self.open) and all(c in _HTML_SPACE for c in text):
            text = "\n" if "\n" in text else " "
        if kind == "cdata" or (kind == "text" and not _HIDDEN.intersection(self.open)):
            self.out.append(text)

    def _close(self, tag: str) -> None:
        self.flush()
        if tag in self.open:
            while self.open.pop() != tag:
                pass

    def handle_starttag(self, tag, attrs):
        self.flush()
        self.open.append(tag)
        if tag in _VOID:
            self._close(tag)
            self.closed_voids.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.flush()
        self.open.append(tag)
        self._close(tag)

    def handle_endtag(self, tag):
        if tag in self.closed_voids:
            self.closed_voids.remove(tag)
        else:
            self._close(tag)

    def handle_data(self, data):
        self.pending.append(data)

    def handle_entityref(self, name):
        char = _NAMED.get(name)
        self.pending.append("&" + name if char is None else char)

    def handle_charref(self, name):
        self.pending.append(_numeric_reference(name))

    def _node(self, data, kind="hidden"):  # comments, declarations, processing instructions
        self.flush()
        self.pending = [data]
        self.flush(kind)

    handle_comment = handle_decl = handle_pi = _node

    def unknown_decl(self, data):
        if data.upper().startswith("CDATA["):  # CDATA sections are text, even inside <template>
            self._node(data[len("CDATA["):], "cdata")
        else:
            self._node(data)


def html_text(text: str) -> str:
    """str -> str: the text content of ``text`` read as HTML, as
    ``BeautifulSoup(text, "html.parser").text``: tags removed, named and numeric character
    references decoded (unknown ``&name;`` kept as ``&name``), comments/declarations and
    ``script``/``style``/``template``/``rt``/``rp`` contents dropped, whitespace-only runs
    between tags collapsed to ``" "`` (``"\\n"`` if they hold one) outside ``pre``/``textarea``.
    Markup ``html.parser`` cannot read is returned unchanged."""
    parser = _TextOfHTML()
    try:
        parser.feed(text)
        parser.close()
    except AssertionError:
        return text
    parser.flush()
    return "".join(parser.out)


# ------------------------------------------------------------------ ftfy.fix_text (subset)

def _build_entities() -> dict[str, str]:
    table = {}
    for name, char in html.entities.html5.items():
        if not name.endswith(";"):
            continue
        table["&" + name] = char
        upper = "&" + name.upper()
        if name == name.lower() and html.unescape(upper) == upper:  # "&EACUTE;" -> "É"
            table[upper] = char.upper()
    return table


_ENTITIES = _build_entities()
_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_C1 = re.compile("[\x80-\x9f]")
_ANSI = re.compile("\x1b\\[[0-9;]*[A-Za-z]")
_LIGATURES = {0x132: "IJ", 0x133: "ij", 0x149: "\u02bcn", 0x1C4: "D\u017d", 0x1C5: "D\u017e",
              0x1C6: "d\u017e", 0x1C7: "LJ", 0x1C8: "Lj", 0x1C9: "lj", 0x1CA: "NJ", 0x1CB: "Nj",
              0x1CC: "nj", 0x1F1: "DZ", 0x1F2: "Dz", 0x1F3: "dz", 0xFB00: "ff", 0xFB01: "fi",
              0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl", 0xFB05: "\u017ft", 0xFB06: "st"}
_WIDTH = {0x3000: " "}
_WIDTH.update({c: unicodedata.normalize("NFKC", chr(c)) for c in range(0xFF01, 0xFFF0)
               if unicodedata.normalize("NFKC", chr(c)) != chr(c)})
_QUOTES = {c: "'" for c in (0x2BC, 0x2018, 0x2019, 0x201A, 0x201B)}
_QUOTES.update({c: '"' for c in range(0x201C, 0x2020)})
_CONTROLS = dict.fromkeys([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070),
                           0xFEFF, *range(0xFFF9, 0xFFFD)])
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _entity(match: re.Match) -> str:
    ref = match.group()
    if ref in _ENTITIES:
        return _ENTITIES[ref]
    if ref.startswith("&#"):
        char = html.unescape(ref)
        return ref if ";" in char else char
    return ref


def _c1(match: re.Match) -> str:
    try:
        return match.group().encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:  # 0x81 0x8d 0x8f 0x90 0x9d: undefined in Windows-1252, kept
        return match.group()


def _fix_line(line: str, unescape: bool) -> str:
    while True:
        before = line
        if unescape:
            line = _ENTITY.sub(_entity, line)
        line = _C1.sub(_c1, line).translate(_LIGATURES).translate(_WIDTH).translate(_QUOTES)
        line = (line.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
                .replace("\u2029", "\n").replace("\x85", "\n"))
        if _SURROGATE.search(line):
            line = _SURROGATE_PAIR.sub(
                lambda m: chr(0x10000 + (ord(m.group()[0]) - 0xD800) * 0x400 + ord(m.group()[1]) - 0xDC00), line)
            line = _SURROGATE.sub("\ufffd", line)
        line = unicodedata.normalize("NFC", _ANSI.sub("", line).translate(_CONTROLS))
        if line == before:
            return line


def fix_text(text: str) -> str:
    """str -> str: ftfy's default ``fix_text`` except mojibake repair (see the module doc).
    Works line by line (each piece ends at a ``"\\n"``); HTML entities are decoded until the
    first line holding a ``<`` (from then on, for the rest of the text, they are kept)."""
    out, unescape, pos = [], True, 0
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        line = text[pos:end]
        unescape = unescape and "<" not in line
        out.append(_fix_line(line, unescape))
        pos = end
    return "".join(out)


# ------------------------------------------------------------------ clean_caption

def _sub(pattern: str, repl: str):
    rx = re.compile(pattern)
    return lambda s: rx.sub(repl, s)


_URL_TAIL = r"(?:/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+\.(?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@))"
_FILE_EXT = "(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"
_DASHES = ("\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u301c\u3030"
           "\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d")
_BAD_PUNCT = "#®•©™&@·º½¾¿¡§~)(\\]\\[}{|\\\\/*"

_BEFORE_FTFY = [
    _sub("<person>", "person"),
    _sub(r"\b(?:https?:" + _URL_TAIL, ""),                 # urls with a scheme or a known TLD
    _sub(r"\b(?:www:" + _URL_TAIL, ""),
    html_text,
    _sub(r"@\w+\b", ""),                                    # @nickname
    _sub("[\u31c0-\u9fff]+", ""),                           # CJK strokes .. unified ideographs
    _sub(f"[{_DASHES}]+", "-"),
    _sub("[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]", '"'),
    _sub("[\u2018\u2019]", "'"),
    _sub("&quot;?", ""),
    _sub("&amp", ""),
    _sub(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),      # ip addresses
    _sub(r"\d:\d\d\s+$", ""),                               # article ids
    _sub(r"\\n", " "),                                      # a literal backslash-n
    _sub(r"#\d{1,3}\b", ""),
    _sub(r"#\d{5,}\b", ""),
    _sub(r"\b\d{6,}\b", ""),
    _sub(r"\S+\." + _FILE_EXT, ""),                         # file names
    _sub("[\"']{2,}", '"'),
    _sub(r"\.{2,}", " "),
    _sub(f"[{_BAD_PUNCT}]+", " "),
    _sub(r"\s+\.\s+", " "),
]

_AFTER_FTFY = [
    _sub(r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),                 # product codes: jc6640
    _sub(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),                 # jc6640vc
    _sub(r"\b\d+[a-zA-Z]+\d+\b", ""),                       # 6640vc231
    _sub(r"(worldwide\s+)?(free\s+)?shipping", ""),
    _sub(r"(free\s)?download(\sfree)?", ""),
    _sub(r"\bclick\b\s(?:for|on)\s\w+", ""),
    _sub(r"\b" + _FILE_EXT + r"(\simage[s]?)?", ""),
    _sub(r"\bpage\s+\d+\b", ""),
    _sub(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # j2d1a2a...
    _sub("\\b\\d+\\.?\\d*[x\u0445\u00d7]\\d+\\.?\\d*\\b", ""),  # sizes: 1920x1080 (latin x, cyrillic x, times)
    _sub(r"\b\s+:\s+", ": "),
    _sub(r"(\D[,./])\b", r"\1 "),
    _sub(r"\s+", " "),
    _sub(r"^[\"']([\w\W]+)[\"']$", r"\1"),                  # one pair of surrounding quotes
    _sub(r"^['_,\-:;]", ""),
    _sub(r"['_,\-:+]$", ""),
    _sub(r"^\.\S+$", ""),
]

_HYPHEN_OR_UNDERSCORE = re.compile("[-_]")


def clean_caption(caption) -> str:
    """One pass of LlamaGen's caption cleaning (``T5Embedder.clean_caption``): str -> str
    (anything else is ``str()``-ed first). See the module docstring for what it removes."""
    text = urllib.parse.unquote_plus(str(caption)).strip().lower()
    for step in _BEFORE_FTFY:
        text = step(text)
    if len(_HYPHEN_OR_UNDERSCORE.findall(text)) > 3:       # this-is-my-cute-cat
        text = _HYPHEN_OR_UNDERSCORE.sub(" ", text)
    text = html.unescape(html.unescape(fix_text(text))).strip()
    for step in _AFTER_FTFY:
        text = step(text)
    return text.strip()
