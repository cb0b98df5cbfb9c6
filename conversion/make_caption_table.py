"""Writes tests/fixtures/caption/llamagen_captions.json: LlamaGen's own caption preprocessing
(``T5Embedder.text_preprocessing`` with its default ``use_text_preprocessing=True``, i.e.
``clean_caption`` twice) applied to GenEval's 553 prompts and to hard cases (URLs, HTML,
entities, punctuation runs, CJK, emoji, numbers, hashtags, IP addresses, file names, ...).

Development time only. Needs a LlamaGen checkout and the packages its ``language/t5.py``
imports (torch, transformers, huggingface_hub, ftfy, beautifulsoup4)::

    pip install ftfy beautifulsoup4
    python conversion/make_caption_table.py --llamagen-src /path/to/LlamaGen \\
        [--geneval evaluation_metadata.jsonl] [--out tests/fixtures/caption/llamagen_captions.json]

LlamaGen's module is imported from the checkout at run time (nothing of it is copied). Its
``T5Embedder.__init__`` loads a T5 model; the preprocessing methods need none, so they are called
on an instance made without ``__init__``. The table records the package versions used.

``--fuzz N`` (no table written): N random markup-heavy strings (tags, entities, URLs, percent
escapes, Latin-1 / punctuation / CJK / width / control characters, mojibake fragments) through
LlamaGen's preprocessing and ``scalingar_jax.caption.llamagen_preprocess``; prints how many
differ, with ftfy as LlamaGen calls it and with ftfy's mojibake repair (``fix_encoding``) off,
the one part of ftfy that module does not reproduce.
"""
from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import _import_llamagen  # noqa: E402  (same folder, dev-time helper)

HARD_CASES = [
    "A photo of a Cat",
    "  Leading and trailing spaces   ",
    "Visit https://example.com/path?q=1 for more",
    "see www.example.org/page and http://foo.bar",
    "my site is cats.co and dogs.ru/x",
    "email me at john@example.com please",
    "<b>bold</b> and <i>italic</i> text",
    "<p>para one</p><p>para two</p>",
    "<script>alert(1)</script>safe text",
    "a <!-- comment --> b",
    "a &amp; b &lt;tag&gt; &quot;quoted&quot; &#39;single&#39;",
    "Tom &amp Jerry",
    "fish &amp;amp; chips",
    "caf&eacute; and na&iuml;ve, &EACUTE;",
    "A&nbsp;B&nbsp;C",
    "wow!!! really??? yes... no.... ok",
    "***SOLD OUT*** #sale ~tilde~ {braces} [brackets] (parens) |pipe| back\\slash",
    "price: $100, 50% off; 3/4 cup & more",
    "猫が座っている a cat sitting",
    "一只猫 and a dog 狗",
    "ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ １２３",
    "emoji 😀🐱 time 🚀",
    "the year 2024 and number 1234567 and 12345",
    "#1 best #12345 #hashtag #abc123",
    "server at 192.168.0.1 is down",
    "download image.png and photo.JPG now",
    "file_name_with_underscores_here.txt",
    "this-is-my-cute-cat",
    "well-known long-term plan",
    "model jc6640 and jc6640vc and 6640vc231 and j2d1a2a3",
    "size 1920x1080 and 3.5×2 and 10х20",
    "free shipping worldwide free shipping on all orders",
    "free download click here click for details page 3",
    "\"a quoted caption\"",
    "'single quoted'",
    "“curly” ‘quotes’ «guillemets» `backtick´",
    "em—dash en–dash minus−sign double--hyphen",
    "line one\\nline two",
    "real\nnewline\r\nand tab\there",
    "@username said hi to @other_user",
    "article 1:23   ",
    "ﬁne ﬂowers ﬀ",
    "ends with comma,",
    "- starts with a dash",
    ".hidden",
    "a  .  b",
    "hello,world.foo/bar",
    "key : value",
    "a+b=c+",
    "Ümlaut ÄÖÜ ß straße",
    "e\u0301 combining accent",
    "100%25 encoded+plus%20space",
    "a<b and c>d",
    "&lt;b&gt;not bold&lt;/b&gt;",
    "<pre>  keep   spaces  </pre> x",
    "&#128512; &#x1F600; &#150; &#0;",
    "unknown &foo; entity",
    "<person> walking a dog",
    "the A-B-C-D-E test",
    "PNG image of a cat, jpg images",
    "123456789",
    "\u00a0non-breaking\u00a0space\u2009thin",
    "zero\u200bwidth space",
    "soft\u00adhyphen",
    "control\x07char",
    "caf\u00c3\u00a9 mojibake",
    "<template>hid<b>den</b></template>shown",
    "<ruby>kan<rp>(</rp><rt>k</rt><rp>)</rp></ruby> ji",
    "a<![CDATA[ raw <x> ]]>b",
    "x<br>   </br>y",
    "<div>a<span>b</div>c</span>d",
    "&#x80; &#x81; &#150; &#65a",
    "&amp;lt; &amp;amp;amp;",
    "3 &lt; 5 and &gt; 2\n&eacute; on line two",
    "The \u201cBest\u201d Photo \u2014 2024 Edition!!!",
    "x\u00b2 squared, \u00bd cup, 1\u00aa place, caf\u0065\u0301 au lait",  # NFC, not NFKC: \u00b2 stays
]
# UTF-8 text that was decoded as Windows-1252 and survives lowercasing: ftfy repairs it (in
# part), scalingar_jax.caption does not (a documented difference; the test expects these to differ)
MOJIBAKE = ["it\u00e2\u20ac\u2122s fine", "\u00e2\u20ac\u0153quoted\u00e2\u20ac\x9d"]


FUZZ_PIECES = ["<b>", "</b>", "<br>", "</br>", "<script>", "</script>", "<template>", "</template>", "<rt>", "</rt>",
               "<pre>", "</pre>", "<!--", "-->", "<![CDATA[", "]]>", "&amp;", "&lt;", "&#65;", "&#x41;", "&quot;",
               "&nbsp;", "http://", "www.", ".com", ".png", "&EACUTE;", "&#150;", "%20", "+", "\u00e2\u20ac\u2122",
               "\u00c3\u00a9"]
FUZZ_CHARS = (list("<>/&;#abcdefxyz ABC 0123456789.,-_!?\"'\n\t@:=%+*~|\\()[]{}")
              + [chr(c) for c in [*range(0xA0, 0x180), *range(0x2010, 0x2030), 0x3000, 0xFF21, 0xFB01, 0x4E00, 0x1F600,
                                  0x80, 0x96, 0x2028, 0x200B, 0xFEFF, 0x7, 0x1B]])


def fuzz(t5, n: int, seed: int = 0) -> None:
    import random

    import ftfy

    from scalingar_jax.caption import llamagen_preprocess

    rnd = random.Random(seed)
    texts = ["".join(rnd.choice(FUZZ_PIECES) if rnd.random() < 0.25
                     else "".join(rnd.choice(FUZZ_CHARS) for _ in range(rnd.randint(1, 6)))
                     for _ in range(rnd.randint(1, 14))) for _ in range(n)]
    ours = [llamagen_preprocess(t) for t in texts]
    embedder = object.__new__(t5.T5Embedder)
    embedder.use_text_preprocessing = True
    for label, fix in (("ftfy as LlamaGen calls it", ftfy.fix_text),
                       ("ftfy without fix_encoding", lambda s: ftfy.fix_text(s, fix_encoding=False))):
        t5.ftfy = type("ftfy_as_called", (), {"fix_text": staticmethod(fix)})
        wrong = [t for t, o in zip(texts, ours) if embedder.text_preprocessing(t) != o]
        print(f"{label}: {len(wrong)} of {n} differ" + (f"; first {ascii(wrong[0])}" if wrong else ""))
    t5.ftfy = ftfy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llamagen-src", required=True, type=Path)
    ap.add_argument("--geneval", type=Path, default=Path("/work/shared/data/geneval/evaluation_metadata.jsonl"))
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "caption" / "llamagen_captions.json")
    ap.add_argument("--fuzz", type=int, default=0, metavar="N", help="compare on N random strings instead")
    a = ap.parse_args()
    t5 = _import_llamagen(a.llamagen_src.resolve(), "language.t5")
    if a.fuzz:
        sys.path.insert(0, str(ROOT))
        return fuzz(t5, a.fuzz)
    embedder = object.__new__(t5.T5Embedder)   # no model: only the text methods are used
    embedder.use_text_preprocessing = True
    prompts = [json.loads(line)["prompt"] for line in a.geneval.read_text().splitlines() if line.strip()]
    cases = [{"source": "geneval", "input": p} for p in prompts] + [{"source": "hard", "input": h} for h in HARD_CASES]
    cases += [{"source": "mojibake", "input": m} for m in MOJIBAKE]
    for c in cases:
        c["output"] = embedder.text_preprocessing(c["input"])
    versions = {p: metadata.version(p) for p in ("ftfy", "beautifulsoup4")}
    versions["python"] = sys.version.split()[0]
    table = {"what": "LlamaGen language/t5.py T5Embedder.text_preprocessing (use_text_preprocessing=True)",
             "made_by": "conversion/make_caption_table.py", "versions": versions, "cases": cases}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(table, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(prompts)} GenEval prompts + {len(HARD_CASES)} hard cases + {len(MOJIBAKE)} mojibake -> {a.out}")


if __name__ == "__main__":
    main()
